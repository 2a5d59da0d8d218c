"""Labelled sequences for sequence learners (MANN, Santoro et al. 2016): an episode's
images one after another in a seeded random order, each with its label, which a learner
sees one step late (at step t the image x_t and the label y_{t-1}).

A sequence of N classes × K samples is the support set of an N-way K-shot episode
(`EpisodeSampler`) in a random order: the classes are drawn at random per episode and
labelled 0..N-1 in their drawn order, so a class's label is re-drawn every episode. Which
presentation of its class a step is (`Sequences.instances`) gives the paper's metric,
accuracy by instance. Fixed test sequences depend only on (seed, setting, split size),
as fixed episodes do, so every sequence learner is scored on the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from hypermeta.data.episodes import (
    EpisodeIndex,
    Episodes,
    EpisodeSampler,
    EpisodeSetting,
    seeded_generator,
)


@dataclass
class Sequences:
    """B sequences of T steps: x (B, T, C, H, W) (or features (B, T, D)), labels y (B, T)
    in 0..n_way-1."""

    x: torch.Tensor
    y: torch.Tensor
    n_way: int

    @property
    def instances(self) -> torch.Tensor:
        """(B, T): which presentation of its class each step is, from 1."""
        one_hot = F.one_hot(self.y, self.n_way)
        return (one_hot.cumsum(1) * one_hot).sum(-1)


def in_order(episodes: Episodes, order: torch.Tensor) -> Sequences:
    """Each episode's support set as a sequence, step t its support example order[b, t]."""
    order = order.to(episodes.support_y.device)
    rows = torch.arange(len(order), device=order.device).unsqueeze(1)
    return Sequences(
        episodes.support_x[rows, order], episodes.support_y[rows, order], episodes.n_way
    )


def random_orders(count: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(count, length): a random permutation of the steps per sequence."""
    return torch.rand(count, length, generator=generator).argsort(1)


def shuffled_support(episodes: Episodes, generator: torch.Generator) -> Sequences:
    """Each episode's support set as a sequence in a random order drawn from `generator`."""
    return in_order(episodes, random_orders(*episodes.support_y.shape, generator))


@dataclass(frozen=True)
class SequenceIndex:
    """Which sequences: the episodes' classes and drawings, and each one's step order."""

    episodes: EpisodeIndex
    order: torch.Tensor  # (E, N·K)

    def __len__(self) -> int:
        return len(self.order)

    def chunks(self, size: int) -> list[SequenceIndex]:
        parts = zip(self.episodes.chunks(size), self.order.split(size), strict=True)
        return [SequenceIndex(episodes, order) for episodes, order in parts]


def fixed_sequences(
    sampler: EpisodeSampler, n_way: int, per_class: int, count: int, seed: int
) -> SequenceIndex:
    """The test sequences of N classes × `per_class` samples: the same for every learner."""
    setting = sequence_setting(n_way, per_class)
    episodes = sampler.draw(setting, count, seeded_generator("fixed sequences", seed, setting))
    orders = random_orders(count, n_way * per_class, seeded_generator("order", seed, setting))
    return SequenceIndex(episodes, orders)


def gather_sequences(sampler: EpisodeSampler, index: SequenceIndex) -> Sequences:
    n_way, length = index.episodes.classes.shape[1], index.order.shape[1]
    setting = sequence_setting(n_way, length // n_way)
    return in_order(sampler.gather(setting, index.episodes), index.order)


def sequence_setting(n_way: int, per_class: int) -> EpisodeSetting:
    """The episodes whose support sets make the sequences (no queries)."""
    return EpisodeSetting(n_way, per_class, 0)
