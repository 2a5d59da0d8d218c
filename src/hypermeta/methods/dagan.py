"""Data augmentation GAN (DAGAN; Antoniou, Storkey & Edwards 2017), kept small for 28×28:
a generator that takes a drawing and noise and draws another drawing of the same class,
and a discriminator of pairs.

Generator G(x, z): a conv encoder of the conditioning drawing x (28 → 14 → 7, w then 2w
channels); the noise z (`noise_size`) projected to a w-channel 7×7 map and concatenated to
the encoding; a decoder of transposed convs (7 → 14 → 28) with one U-Net skip, the
encoder's 14×14 map concatenated to the decoder's; tanh output. Discriminator D(x, y):
the pair as two channels, strided convs 28 → 14 → 7, one logit. Real pairs are two
drawings of one meta-train class (the engine draws them: `needs_condition`), fake pairs
x with G(x, z). The losses are the GAN frame's (`gan.py`) on the pair logits:
  discriminator  −mean log D(x, x') − mean log(1 − D(x, G(x, z)))
  generator      −mean log D(x, G(x, z))
The paper's reference implementation is deeper (a UResNet generator with noise at several
decoder layers, a DenseNet discriminator) and trains on the improved Wasserstein loss;
this one keeps its structure (encoder, noise at the bottleneck, skip, pair critic) on the
project's GAN frame and Adam settings.

Every normalisation is per drawing (layer norm over one drawing's channels and pixels,
`GroupNorm(1, ·)`), not batch norm: a sample depends on its own condition and noise only,
in training and eval mode alike, so augmenting a support set leaks nothing between its
images (tested). The code of a drawing (`encode`) is its encoder output, the 14×14 skip
and the 7×7 bottleneck flattened; `decode` draws from a code at zero noise (the noise's
mean), which is what the interpolation figure walks along. There is no prior over drawings
(`sample` refuses): new drawings come from `samples_like`.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from hypermeta.config import StrictModel
from hypermeta.errors import HypermetaError
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.gan import GAN
from hypermeta.methods.generative_base import normal


class DAGANConfig(StrictModel):
    noise_size: int = Field(32, gt=0, description="dimensions of the noise z")
    width: int = Field(32, gt=0, description="channels at 14×14 (7×7 has twice as many)")


def down(in_channels: int, out_channels: int) -> nn.Sequential:
    """Halve the side: strided conv, per-drawing layer norm, LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 4, 2, 1),
        nn.GroupNorm(1, out_channels),
        nn.LeakyReLU(0.2),
    )


class PairGenerator(nn.Module):
    """G(x, z): x (B, C, H, W) in [−1, 1] and z (B, noise_size) → (B, C, H, W) in [−1, 1]."""

    def __init__(self, config: DAGANConfig, shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = shape
        w = config.width
        self.skip_shape = (w, height // 2, width // 2)
        self.bottleneck_shape = (2 * w, height // 4, width // 4)
        self.noise_shape = (w, height // 4, width // 4)
        self.first, self.second = down(channels, w), down(w, 2 * w)
        self.noise = nn.Linear(config.noise_size, math.prod(self.noise_shape))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(3 * w, w, 4, 2, 1), nn.GroupNorm(1, w), nn.ReLU()
        )
        self.out = nn.Sequential(nn.ConvTranspose2d(2 * w, channels, 4, 2, 1), nn.Tanh())

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The skip (B, w, H/2, W/2) and the bottleneck (B, 2w, H/4, W/4) of x."""
        skip = self.first(x)
        return skip, self.second(skip)

    def decode(self, skip: Tensor, bottleneck: Tensor, z: Tensor) -> Tensor:
        noise = self.noise(z).view(-1, *self.noise_shape)
        up = self.up(torch.cat([bottleneck, noise], 1))
        return self.out(torch.cat([up, skip], 1))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.decode(*self.encode(x), z)


def pair_discriminator(config: DAGANConfig, shape: tuple[int, int, int]) -> nn.Sequential:
    """D(x, y) on the pair stacked as channels (B, 2C, H, W) → one logit each."""
    channels, height, width = shape
    w = config.width
    return nn.Sequential(
        nn.Conv2d(2 * channels, w, 4, 2, 1),
        nn.LeakyReLU(0.2),
        down(w, 2 * w),
        nn.Flatten(),
        nn.Linear(2 * w * (height // 4) * (width // 4), 1),
    )


class DAGAN(GAN):
    needs_condition = True

    def __init__(self, config: DAGANConfig, shape: tuple[int, int, int]) -> None:
        generator = PairGenerator(config, shape)
        code_size = math.prod(generator.skip_shape) + math.prod(generator.bottleneck_shape)
        super().__init__(generator, pair_discriminator(config, shape), code_size, shape)
        self.noise_size = config.noise_size

    def discriminated(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Pairs (B, 2, C, H, W) → the real pairs (x, x') and the fake pairs (x, G(x, z)),
        stacked as channels, in [−1, 1]."""
        condition, target = (2 * images - 1).unbind(1)
        z = normal((len(images), self.noise_size), generator, condition)
        fake = self.generator(condition, z)
        return torch.cat([condition, target], 1), torch.cat([condition, fake], 1)

    def encode(self, images: Tensor) -> Tensor:
        skip, bottleneck = self.generator.encode(2 * images - 1)
        return torch.cat([skip.flatten(1), bottleneck.flatten(1)], 1)

    def decode(self, z: Tensor) -> Tensor:
        skip_size = math.prod(self.generator.skip_shape)
        skip = z[:, :skip_size].view(-1, *self.generator.skip_shape)
        bottleneck = z[:, skip_size:].view(-1, *self.generator.bottleneck_shape)
        noise = torch.zeros(len(z), self.noise_size, device=z.device, dtype=z.dtype)
        return (self.generator.decode(skip, bottleneck, noise) + 1) / 2

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        raise HypermetaError(
            "a DAGAN has no prior to sample: it draws from a conditioning image; call "
            "samples_like(images, m, generator) (engine.generative.generated_images does)."
        )

    def samples_like(self, images: Tensor, m: int, generator: torch.Generator) -> Tensor:
        """G(x, z) for m noise draws z per image x: (B, m, C, H, W) in [0, 1]; each image
        encoded once."""
        skip, bottleneck = self.generator.encode(2 * images - 1)
        z = normal((m, len(images), self.noise_size), generator, skip)

        def repeated(t: Tensor) -> Tensor:  # (B, ...) → (m·B, ...), in z's order
            return t.expand(m, *t.shape).flatten(0, 1)

        drawn = self.generator.decode(repeated(skip), repeated(bottleneck), z.flatten(0, 1))
        return ((drawn + 1) / 2).view(m, *images.shape).transpose(0, 1)


def build(config: DAGANConfig, data_info: dict) -> DAGAN:
    channels, height, width = data_info["image_shape"]
    if height % 4 or width % 4:
        raise HypermetaError(
            f"the DAGAN halves drawings twice; {height}x{width} is not divisible by 4: "
            "use a dataset of 28x28 drawings (omniglot)."
        )
    return DAGAN(config, (channels, height, width))


register(
    MethodSpec(
        name="dagan",
        kind="generative",
        model_config=DAGANConfig,
        build=build,
        summary="DAGAN (Antoniou et al. 2017): a drawing + noise → another drawing of its "
        "class; pair discriminator",
    )
)
