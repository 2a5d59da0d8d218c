"""The interface of a generative model (engine kind `generative`): what the engine
trains, what the plots draw and what a few-shot learner may ask of it.

Images cross this interface as binarised Omniglot drawings, floats in {0, 1}, shape
(B, 1, H, W), strokes 1 (`binarised`); samples come back in [0, 1]. Every random draw
takes a `torch.Generator` (on the CPU), so a run is repeatable from its seeds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn
from torch.optim import Optimizer


def binarised(images: Tensor) -> Tensor:
    """uint8 drawings (strokes light) → floats in {0, 1}: a fixed threshold at half
    intensity, so the Bernoulli likelihood is of the same binary data on every run."""
    return (images > 127).float()


def normal(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal noise from a CPU generator, on the device and dtype of `like`."""
    return torch.randn(shape, generator=generator).to(like)


class GenerativeModel(nn.Module, ABC):
    latent_size: int
    # True (DAGAN): it draws only from a conditioning image. It trains on same-class pairs,
    # (B, 2, 1, H, W) batches of two drawings of one class (the condition, then a target),
    # and has no prior: `sample` is undefined and its drawings come from `samples_like`.
    needs_condition: bool = False

    @abstractmethod
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """What each of its optimizers updates, by name (a VAE has one; a GAN its
        discriminator's and its generator's): the engine makes one Adam per group."""

    @abstractmethod
    def train_step(
        self, images: Tensor, optimizers: dict[str, Optimizer], generator: torch.Generator
    ) -> dict[str, float]:
        """One update on a batch of training images (pairs if `needs_condition`); the
        losses it took."""

    @abstractmethod
    def validation(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Its losses on held-out images, without updating anything."""

    @abstractmethod
    def decode(self, z: Tensor) -> Tensor:
        """Latent codes (B, latent_size) → images in [0, 1]."""

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """Images → latent codes (B, latent_size) that `decode` maps back near them."""

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n images from the prior."""
        device = next(self.parameters()).device
        return self.decode(torch.randn((n, self.latent_size), generator=generator).to(device))

    def interpolate(self, a: Tensor, b: Tensor, steps: int) -> Tensor:
        """Decoded points on the line between the codes of images a and b (1, 1, H, W):
        (steps, 1, H, W), a's end first."""
        codes = self.encode(torch.cat([a, b]))
        weights = torch.linspace(0, 1, steps, device=codes.device).unsqueeze(1)
        return self.decode((1 - weights) * codes[:1] + weights * codes[1:])

    def samples_like(self, images: Tensor, m: int, generator: torch.Generator) -> Tensor | None:
        """m new drawings of the class of each image: (B, m, 1, H, W) in [0, 1]; the one
        call a few-shot learner needs for support-set augmentation. None: this model
        cannot condition on an image (an unconditional GAN)."""
        return None

    def on_iteration(self, iteration: int, total: int) -> None:
        """Called before each training iteration (a schedule would go here)."""
        return None
