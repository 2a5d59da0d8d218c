"""Generative adversarial network (Goodfellow et al. 2014), the plain MLP form: generator
z (100) → 128 → 256 → 512 → 1024 → pixels, LeakyReLU(0.2) and batch norm after every
hidden layer but the first, tanh output; discriminator pixels → 512 → 256 → 1 with
LeakyReLU(0.2) and a sigmoid; binary cross-entropy, Adam 2e-4, β = (0.5, 0.999) (the
engine's `train.lr`, `train.betas`). The discriminator returns the logit and the losses
apply the sigmoid inside the BCE (the same function, numerically stable).

Losses, with D the sigmoid of the discriminator's logit and G(z) a generated image:
  discriminator  −mean log D(x) − mean log(1 − D(G(z)))
  generator      −mean log D(G(z))   (the non-saturating form)
`GAN` is the training frame any generator/discriminator pair plugs into (`dcgan.py` its
convolutional pair; `dagan.py` a conditional pair, through `discriminated`). A GAN has no
encoder: `encode` projects an image onto the latent space by gradient descent on z, for
the interpolation figures; it cannot augment a support set (`samples_like` is None).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.optim import Optimizer

from hypermeta.config import StrictModel
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.generative_base import GenerativeModel, normal

PROJECTION_STEPS = 200  # gradient steps on z that `encode` takes per batch


class GANConfig(StrictModel):
    latent_size: int = Field(100, gt=0, description="dimensions of the noise z")
    generator_hidden: list[int] = Field([128, 256, 512, 1024], min_length=1)
    discriminator_hidden: list[int] = Field([512, 256], min_length=1)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """−mean log D(x) − mean log(1 − D(G(z))), D = sigmoid(logit)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss(fake_logits: Tensor) -> Tensor:
    """−mean log D(G(z)): the generator's non-saturating loss."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def mlp_generator(latent_size: int, hidden: list[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = latent_size
    for i, size in enumerate(hidden):
        layers.append(nn.Linear(width, size))
        if i > 0:  # the first block has no batch norm (as in the reference implementation)
            layers.append(nn.BatchNorm1d(size))
        layers.append(nn.LeakyReLU(0.2))
        width = size
    return nn.Sequential(*layers, nn.Linear(width, out_features), nn.Tanh())


def mlp_discriminator(in_features: int, hidden: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.LeakyReLU(0.2)]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, 1))


class GAN(GenerativeModel):
    """A generator of tanh outputs in [−1, 1] and a discriminator of logits, over data of
    `shape`; images cross the interface in [0, 1]."""

    def __init__(
        self, generator: nn.Module, discriminator: nn.Module, latent_size: int, shape: tuple
    ) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.latent_size, self.shape = latent_size, tuple(shape)

    def generate(self, z: Tensor) -> Tensor:
        """z → generated data in [−1, 1], shaped as the data."""
        return self.generator(z).view(-1, *self.shape)

    def critic(self, data: Tensor) -> Tensor:
        """Data in [−1, 1] → the discriminator's logits (B,)."""
        return self.discriminator(data).view(-1)

    def discriminated(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """What the discriminator tells apart on a batch of training images: real data and
        generated data, both in [−1, 1] (a DAGAN: pairs)."""
        real = 2 * images - 1
        return real, self.generate(normal((len(images), self.latent_size), generator, real))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "discriminator": list(self.discriminator.parameters()),
            "generator": list(self.generator.parameters()),
        }

    def train_step(
        self, images: Tensor, optimizers: dict[str, Optimizer], generator: torch.Generator
    ) -> dict[str, float]:
        real, fake = self.discriminated(images, generator)
        d_loss = discriminator_loss(self.critic(real), self.critic(fake.detach()))
        optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["discriminator"].step()
        # the generator's step sees the discriminator just updated, on the same batch of z
        g_loss = generator_loss(self.critic(fake))
        optimizers["generator"].zero_grad(set_to_none=True)
        g_loss.backward()
        optimizers["generator"].step()
        return {"discriminator_loss": d_loss.item(), "generator_loss": g_loss.item()}

    @torch.no_grad()
    def validation(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        real, fake = self.discriminated(images, generator)
        fake_logits = self.critic(fake)
        d_loss = discriminator_loss(self.critic(real), fake_logits)
        g_loss = generator_loss(fake_logits)
        return {"discriminator_loss": d_loss.item(), "generator_loss": g_loss.item()}

    def decode(self, z: Tensor) -> Tensor:
        return (self.generate(z) + 1) / 2

    @torch.enable_grad()
    def encode(self, images: Tensor) -> Tensor:
        """The z whose generated image is nearest `images` (squared error), found by Adam
        on z from zero; the networks are left as they are."""
        z = torch.zeros(len(images), self.latent_size, device=images.device, requires_grad=True)
        optimizer = torch.optim.Adam([z], lr=0.05)
        frozen = [p.requires_grad_(False) for p in self.generator.parameters()]
        try:
            for _ in range(PROJECTION_STEPS):
                loss = (self.decode(z) - images).square().sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return z.detach()


def build(config: GANConfig, data_info: dict) -> GAN:
    shape = tuple(data_info["image_shape"])
    pixels = math.prod(shape)
    return GAN(
        mlp_generator(config.latent_size, config.generator_hidden, pixels),
        mlp_discriminator(pixels, config.discriminator_hidden),
        config.latent_size,
        shape,
    )


register(
    MethodSpec(
        name="gan",
        kind="generative",
        model_config=GANConfig,
        build=build,
        summary="MLP GAN, BCE, Adam 2e-4 β=(0.5, 0.999) (Goodfellow 2014; the common baseline)",
    )
)
