"""Episodes from a real split and extra classes beside it (task generation's synthetic
classes, engine/task_generation.py): each episode is wholly of one kind, of the extra
classes with probability `fraction`.

The real episodes are drawn exactly as `EpisodeSampler.draw` draws them from the same
generator; which episodes are replaced, and by what, comes from the generator's state
after that draw. So a fraction of 0 samples bit for bit what the real split alone does,
and every draw stays seeded by the caller's generator (exact resume).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hypermeta.data.episodes import EpisodeIndex, EpisodeSampler, EpisodeSetting
from hypermeta.errors import HypermetaError


class MixedEpisodeSampler(EpisodeSampler):
    """`real`'s classes, then `extra` (classes, drawings, ...) of the same drawings and
    shape, in one tensor: episode classes index both, the extra ones after the real."""

    def __init__(self, real: EpisodeSampler, extra: Tensor, fraction: float) -> None:
        if extra.shape[1:] != real.images.shape[1:]:
            raise HypermetaError(
                f"extra classes of shape {tuple(extra.shape[1:])} cannot join a split of "
                f"{tuple(real.images.shape[1:])} per class; make them alike."
            )
        device = real.images.device
        super().__init__(torch.cat([real.images, extra.to(device)]), real.mean, real.std, device)
        self.fraction = fraction
        split = real.num_classes
        self.real = EpisodeSampler(self.images[:split], real.mean, real.std, device)
        self.extra = EpisodeSampler(self.images[split:], real.mean, real.std, device)

    def check(self, setting: EpisodeSetting, where: str) -> None:
        self.real.check(setting, where)
        self.extra.check(setting, f"{where} (generated classes)")

    def draw(self, setting: EpisodeSetting, count: int, generator: torch.Generator) -> EpisodeIndex:
        index = self.real.draw(setting, count, generator)
        follow = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        from_extra = torch.rand(count, generator=follow) < self.fraction
        extra = self.extra.draw(setting, count, follow)
        return EpisodeIndex(
            torch.where(from_extra[:, None], extra.classes + self.real.num_classes, index.classes),
            torch.where(from_extra[:, None, None], extra.drawings, index.drawings),
        )

    def encoded(self, encoder: nn.Module) -> MixedEpisodeSampler:
        features = super().encoded(encoder).images
        split = self.real.num_classes
        real = EpisodeSampler(features[:split], self.mean, self.std, features.device)
        return MixedEpisodeSampler(real, features[split:], self.fraction)
