"""Variational autoencoder (Kingma & Welling 2014) on binarised Omniglot: a convolutional
encoder to a diagonal Gaussian posterior, a transposed-convolution decoder to Bernoulli
pixel probabilities, trained on the ELBO with the Gaussian KL in closed form.

`importance_weighted_bound` is Burda et al.'s (2016) k-sample bound on log p(x), which
the engine reports on the test alphabets (k = 1 is the ELBO). For support-set
augmentation a class's new drawings are decoded from codes drawn around an image's
posterior mean (`samples_like`, spread `model.augment_scale` × the posterior's std).
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


class VAEConfig(StrictModel):
    latent_size: int = Field(32, gt=0, description="dimensions of the latent code z")
    hidden: int = Field(32, gt=0, description="channels of the first conv (the second: 2x)")
    augment_scale: float = Field(
        1.0, gt=0, description="samples_like: spread around the posterior mean, in its stds"
    )


def gaussian_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, exp(log_var)) ‖ N(0, I)) per row, in closed form."""
    return 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(-1)


def bernoulli_log_likelihood(logits: Tensor, images: Tensor) -> Tensor:
    """log p(images | logits) per image, summed over pixels."""
    return -F.binary_cross_entropy_with_logits(logits, images, reduction="none").flatten(1).sum(1)


class ConvVAE(GenerativeModel):
    def __init__(self, config: VAEConfig, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"the VAE halves images twice; {height}x{width} is not divisible by 4")
        h = config.hidden
        self.config, self.latent_size = config, config.latent_size
        self.grid = (2 * h, height // 4, width // 4)
        flat = math.prod(self.grid)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, h, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(h, 2 * h, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, 2 * config.latent_size),
        )
        self.decoder_input = nn.Linear(config.latent_size, flat)
        self.decoder = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(2 * h, h, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(h, channels, 4, 2, 1),
        )

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | x): its mean and log variance."""
        mean, log_var = self.encoder(images).chunk(2, dim=1)
        return mean, log_var

    def decoder_logits(self, z: Tensor) -> Tensor:
        return self.decoder(self.decoder_input(z).view(-1, *self.grid))

    def elbo(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The evidence lower bound per image (one reparameterised sample of z)."""
        mean, log_var = self.posterior(images)
        z = mean + (0.5 * log_var).exp() * normal(mean.shape, generator, mean)
        reconstruction = bernoulli_log_likelihood(self.decoder_logits(z), images)
        return reconstruction - gaussian_kl(mean, log_var)

    def importance_weighted_bound(
        self, images: Tensor, samples: int, generator: torch.Generator
    ) -> Tensor:
        """log (1/k) Σ_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x), per image (nats): a lower
        bound on log p(x) that tightens as k grows."""
        mean, log_var = self.posterior(images)
        std = (0.5 * log_var).exp()
        eps = normal((samples, *mean.shape), generator, mean)
        z = mean + std * eps  # (k, B, d)
        logits = self.decoder_logits(z.flatten(0, 1))
        repeated = images.expand(samples, *images.shape).flatten(0, 1)
        log_px_z = bernoulli_log_likelihood(logits, repeated).view(samples, -1)
        half_log_2pi = 0.5 * math.log(2 * math.pi)
        log_pz = (-0.5 * z.square() - half_log_2pi).sum(-1)
        log_qz = (-0.5 * eps.square() - half_log_2pi - 0.5 * log_var).sum(-1)
        return torch.logsumexp(log_px_z + log_pz - log_qz, 0) - math.log(samples)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"vae": list(self.parameters())}

    def train_step(
        self, images: Tensor, optimizers: dict[str, Optimizer], generator: torch.Generator
    ) -> dict[str, float]:
        loss = -self.elbo(images, generator).mean()
        optimizers["vae"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["vae"].step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def validation(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        return {"loss": -self.elbo(images, generator).mean().item()}

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder_logits(z))

    def encode(self, images: Tensor) -> Tensor:
        return self.posterior(images)[0]

    def samples_like(self, images: Tensor, m: int, generator: torch.Generator) -> Tensor:
        mean, log_var = self.posterior(images)
        spread = self.config.augment_scale * (0.5 * log_var).exp()
        z = mean + spread * normal((m, *mean.shape), generator, mean)  # (m, B, d)
        decoded = self.decode(z.flatten(0, 1)).view(m, *images.shape)
        return decoded.transpose(0, 1)


def build(config: VAEConfig, data_info: dict) -> ConvVAE:
    return ConvVAE(config, tuple(data_info["image_shape"]))


register(
    MethodSpec(
        name="vae",
        kind="generative",
        model_config=VAEConfig,
        build=build,
        summary="convolutional VAE, Bernoulli likelihood, analytic Gaussian KL (Kingma 2014)",
    )
)
