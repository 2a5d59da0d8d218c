"""Support-set augmentation: each support image of a task gets m new drawings of its class
from a trained generative model (engine kind `generative`, `GenerativeModel.samples_like`),
appended to its class's support set, so an N-way K-shot task reaches the learner as N-way
K(1+m)-shot. The few-shot engine applies it at meta-test (`eval.augment`, the same fixed
episodes with and without; the per-episode differences give a paired 95% CI) and, as an
option, at meta-training (`train.augment`).

Only the support images reach the generator, one episode at a time, with a generator
seeded by the episode's position (so a result does not depend on the meta-batch size and
repeats exactly); no query is ever an input of it (tested by a spy model). Generated
drawings come back in [0, 1] and are normalised as the split's images are. For a learner
with an `image_encoder` (encode-once evaluation) the split's features are kept: the
generated drawings alone are encoded, by the same batch-norm-folded copy of the encoder,
and appended to the support features.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from hypermeta.config import StrictModel
from hypermeta.data.episodes import Episodes, seeded_generator
from hypermeta.engine.generative import load_generative
from hypermeta.errors import HypermetaError
from hypermeta.methods.generative_base import GenerativeModel

# The DAGAN paper's anchors (Antoniou, Storkey & Edwards 2017), printed beside ours by the
# report: (what was augmented, accuracy without, with). Their Omniglot split, not ours.
PUBLISHED = (
    ("Matching Networks, Omniglot one-shot (Antoniou et al. 2017, DAGAN)", 0.969, 0.974),
    ("a classifier trained on few samples per class, Omniglot (Antoniou et al. 2017)", 0.69, 0.82),
)


class SupportAugment(StrictModel):
    model: str = Field(
        description="generative experiment (listed under needs) whose samples_like draws"
    )
    samples: int = Field(ge=0, description="m: generated drawings per support image")
    seed: int = Field(0, description="seeds the generated drawings, per episode position")


class SupportAugmenter:
    """`model`'s `samples` drawings per support image, normalised by (`mean`, `std`), for
    episodes of images (`images`) or of `encoder` features (`features`)."""

    def __init__(
        self,
        model: GenerativeModel,
        samples: int,
        seed: int,
        mean: float,
        std: float,
        encoder: nn.Module | None = None,
    ) -> None:
        self.model, self.samples, self.seed = model, samples, seed
        self.mean, self.std, self.encoder = mean, std, encoder

    def test_key(self, setting: object) -> tuple[object, ...]:
        """What seeds the drawings of a test setting's episodes (with their positions)."""
        return ("augment", self.seed, setting)

    def drawings(self, episodes: Episodes, key: tuple[object, ...], first: int) -> torch.Tensor:
        """(B, N·K·m, C, H, W) normalised drawings, class-major as the support set; episode
        b's drawn from its support images alone, with a generator seeded by (`key`, first + b)."""
        # the model's input: binarised drawings (pixel > 127), recovered from the floats
        pixels = ((episodes.support_x * self.std + self.mean) * 255 > 127.5).float()
        drawn = []
        with torch.no_grad():
            for b, support in enumerate(pixels):
                generator = seeded_generator(*key, first + b)
                samples = self.model.samples_like(support, self.samples, generator)
                drawn.append(samples.flatten(0, 1))  # (N·K·m, C, H, W), image by image
        return (torch.stack(drawn) - self.mean) / self.std

    def augmented(
        self,
        episodes: Episodes,
        key: tuple[object, ...],
        first: int = 0,
        features: Episodes | None = None,
    ) -> Episodes:
        """`episodes` (positions first, first + 1, ... under `key`), or `features` (the same
        episodes encoded: the drawings are then encoded too), with each class's support set
        followed by its generated drawings."""
        extra = self.drawings(episodes, key, first)
        target = episodes if features is None else features
        if features is not None:
            with torch.no_grad():
                flat = extra.flatten(0, 1).contiguous(memory_format=torch.channels_last)
                extra = self.encoder(flat).unflatten(0, extra.shape[:2])
        n = target.n_way
        shots = target.support_x.shape[1] // n
        real = target.support_x.unflatten(1, (n, shots))
        generated = extra.unflatten(1, (n, shots * self.samples)).to(real)
        support = torch.cat([real, generated], 2).flatten(1, 2)
        labels = torch.arange(n, device=support.device).repeat_interleave(
            shots * (1 + self.samples)
        )
        return replace(target, support_x=support, support_y=labels.expand(len(support), -1))


def support_generator(model_path: Path, where: str, device: torch.device) -> GenerativeModel:
    """The trained generative model at `model_path`, on `device`; one sentence if it is not
    a generative model or cannot draw new samples of a given image's class."""
    model, saved = load_generative(model_path)
    if not isinstance(model, GenerativeModel):
        raise HypermetaError(
            f"{where} names {saved['experiment']['method']!r}, which is not a generative "
            "model; name a generative experiment (vae_omniglot, a DAGAN)."
        )
    image_shape = tuple(saved["data_info"]["image_shape"])
    probe = model.samples_like(torch.zeros(1, *image_shape), 1, torch.Generator())
    if probe is None:
        raise HypermetaError(
            f"{where} names a {saved['experiment']['method']} model, which cannot draw new "
            "samples of a given image's class (its samples_like returns None: an "
            "unconditional GAN); name a VAE or a DAGAN."
        )
    return model.to(device)
