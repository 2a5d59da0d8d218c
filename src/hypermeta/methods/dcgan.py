"""DCGAN-style convolutional GAN (Radford, Metz & Chintala 2016), sized for 28×28:
generator z → 7×7×2w → transposed convs (batch norm, ReLU) to 14×14×w → 28×28, tanh;
discriminator strided convs 28 → 14 → 7 (LeakyReLU(0.2), batch norm on the second)
→ one logit. Trained by `gan.GAN` with the same losses and Adam settings as the MLP GAN.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from hypermeta.config import StrictModel
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.gan import GAN


class DCGANConfig(StrictModel):
    latent_size: int = Field(64, gt=0, description="dimensions of the noise z")
    width: int = Field(64, gt=0, description="channels at 14×14 (7×7 has twice as many)")


def build(config: DCGANConfig, data_info: dict) -> GAN:
    channels, height, width = data_info["image_shape"]
    if height % 4 or width % 4:
        raise ValueError(f"the DCGAN doubles 7x7 twice; {height}x{width} is not divisible by 4")
    w, grid = config.width, (2 * config.width, height // 4, width // 4)
    generator = nn.Sequential(
        nn.Linear(config.latent_size, grid[0] * grid[1] * grid[2]),
        nn.Unflatten(1, grid),
        nn.BatchNorm2d(2 * w),
        nn.ReLU(),
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        nn.ConvTranspose2d(w, channels, 4, 2, 1),
        nn.Tanh(),
    )
    discriminator = nn.Sequential(
        nn.Conv2d(channels, w, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(w, 2 * w, 4, 2, 1),
        nn.BatchNorm2d(2 * w),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(grid[0] * grid[1] * grid[2], 1),
    )
    return GAN(generator, discriminator, config.latent_size, (channels, height, width))


register(
    MethodSpec(
        name="dcgan",
        kind="generative",
        model_config=DCGANConfig,
        build=build,
        summary="DCGAN-style convolutional GAN (Radford et al. 2016), trained as the MLP GAN",
    )
)
