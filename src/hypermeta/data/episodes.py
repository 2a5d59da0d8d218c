"""Seeded, batched N-way K-shot Q-query episodes from a prepared few-shot split.

A split is `images` (classes, drawings, C, H, W) uint8, kept on the device. An episode
is two index tensors (which classes, which drawings of each), drawn with a seeded
generator and gathered in one indexing operation per meta-batch: no Python work per image.
The same seed and setting always give the same episodes, so every method is evaluated
on identical test episodes and a resumed run draws the meta-batches it would have drawn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import torch
from torch import nn

from hypermeta.errors import HypermetaError


@dataclass
class Episodes:
    """A meta-batch of B tasks, N-way K-shot with Q queries per class, as tensors.

    support_x (B, N·K, C, H, W) float, support_y (B, N·K) in 0..N-1;
    query_x (B, N·Q, C, H, W), query_y (B, N·Q). `classes` (B, N), when the episodes
    were drawn from a split: the split's index of each episode's class n (a learner that
    pre-trains a classifier over all training classes reads it; none at `predict`)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    n_way: int
    classes: torch.Tensor | None = None

    def to(self, device: torch.device) -> Episodes:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Episodes(**moved)


@dataclass(frozen=True)
class EpisodeSetting:
    n_way: int
    k_shot: int
    query: int

    @property
    def name(self) -> str:
        return f"{self.n_way}way_{self.k_shot}shot"


def seeded_generator(*key: object) -> torch.Generator:
    """A CPU generator whose seed is a stable hash of `key` (Python's hash() is salted)."""
    digest = hashlib.sha256(repr(key).encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


@dataclass(frozen=True)
class EpisodeIndex:
    """Which episodes: classes (E, N) and drawings (E, N, K+Q) of each chosen class."""

    classes: torch.Tensor
    drawings: torch.Tensor

    def __len__(self) -> int:
        return len(self.classes)

    def chunks(self, size: int) -> list[EpisodeIndex]:
        return [
            EpisodeIndex(c, d)
            for c, d in zip(self.classes.split(size), self.drawings.split(size), strict=True)
        ]


class EpisodeSampler:
    """Episodes from one split: `images` (classes, drawings, C, H, W) uint8 on `device`,
    normalised with the training split's `mean` and `std` as they are gathered (or, from
    `encoded`, float features (classes, drawings, D) gathered as they are)."""

    def __init__(
        self, images: torch.Tensor, mean: float, std: float, device: torch.device | str = "cpu"
    ) -> None:
        self.images = images.to(device)
        self.mean, self.std = mean, std
        self.num_classes, self.num_drawings = images.shape[:2]

    def check(self, setting: EpisodeSetting, where: str) -> None:
        if setting.n_way > self.num_classes:
            raise HypermetaError(
                f"{where}: {setting.n_way}-way episodes need {setting.n_way} classes but this "
                f"split has {self.num_classes}; lower n_way or use a larger dataset."
            )
        if setting.k_shot + setting.query > self.num_drawings:
            raise HypermetaError(
                f"{where}: {setting.k_shot} shots + {setting.query} queries exceed the "
                f"{self.num_drawings} drawings per class; lower k_shot or query."
            )

    def draw(self, setting: EpisodeSetting, count: int, generator: torch.Generator) -> EpisodeIndex:
        """`count` episodes: distinct classes per episode, distinct drawings per class.

        One row of noise per episode, so the first k of a larger draw are the k drawn
        alone: a shorter evaluation uses a prefix of the same fixed episodes."""
        per_episode = self.num_classes + setting.n_way * self.num_drawings
        noise = torch.rand(count, per_episode, generator=generator)
        classes = noise[:, : self.num_classes].argsort(1)
        drawings = noise[:, self.num_classes :].view(count, setting.n_way, self.num_drawings)
        return EpisodeIndex(
            classes[:, : setting.n_way],
            drawings.argsort(2)[:, :, : setting.k_shot + setting.query],
        )

    def gather(self, setting: EpisodeSetting, index: EpisodeIndex) -> Episodes:
        device = self.images.device
        classes, drawings = index.classes.to(device), index.drawings.to(device)
        x = self.normalise(self.images[classes.unsqueeze(-1), drawings])  # (B, N, K+Q, ...)
        count, n, k = len(classes), setting.n_way, setting.k_shot
        labels = torch.arange(n, device=device).unsqueeze(0).expand(count, n)
        return Episodes(
            support_x=x[:, :, :k].flatten(1, 2),
            support_y=labels.repeat_interleave(k, dim=1),
            query_x=x[:, :, k:].flatten(1, 2),
            query_y=labels.repeat_interleave(setting.query, dim=1),
            n_way=n,
            classes=classes,
        )

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images → the normalised floats a model sees; features (`encoded`) as they are."""
        if images.dtype != torch.uint8:
            return images
        return (images.float() / 255 - self.mean) / self.std

    @torch.no_grad()
    def encoded(self, encoder: nn.Module) -> EpisodeSampler:
        """The same episodes over `encoder`'s features of each image, computed once for the
        whole split: for a learner whose test logits see each image alone, this replaces
        one encoder pass per image per episode. Batches go in channels-last, the layout of
        the fast copy `hypermeta.nn.inference.inference_copy` makes (the engine passes one)."""
        parts = [
            encoder(self.normalise(part).contiguous(memory_format=torch.channels_last))
            for part in self.images.flatten(0, 1).split(256)
        ]
        features = torch.cat(parts).unflatten(0, (self.num_classes, self.num_drawings))
        return EpisodeSampler(features, self.mean, self.std, features.device)

    def sample(self, setting: EpisodeSetting, count: int, generator: torch.Generator) -> Episodes:
        return self.gather(setting, self.draw(setting, count, generator))

    def fixed_episodes(self, setting: EpisodeSetting, count: int, seed: int) -> EpisodeIndex:
        """The evaluation set for a setting: depends only on (seed, setting, split size), so
        every method sees the same episodes."""
        return self.draw(setting, count, seeded_generator("fixed", seed, setting))
