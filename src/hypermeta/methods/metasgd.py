"""Meta-SGD (Li et al. 2017): MAML whose inner learning rate is a learned tensor per
parameter (direction and size of the update are both meta-learned)."""

from __future__ import annotations

import torch
from torch import nn

from hypermeta.methods.gradient.inner_loop import Weights, sgd_step
from hypermeta.methods.gradient.learner import (
    GradientMetaConfig,
    GradientMetaLearner,
    TaskLoss,
    register_learner,
)


class MetaSGD(GradientMetaLearner):
    """`inner_lr` initialises one learned step size per weight entry (alpha in the paper)."""

    def __init__(
        self,
        target: nn.Module,
        config: GradientMetaConfig,
        loss: TaskLoss,
        max_way: int | None = None,
    ) -> None:
        super().__init__(target, config, loss, max_way)
        # Names with dots cannot key a ParameterDict; a list in parameter order can.
        self.names = [name for name, _ in target.named_parameters()]
        self.inner_lrs = nn.ParameterList(
            nn.Parameter(torch.full_like(p, config.inner_lr)) for p in target.parameters()
        )

    def inner_update(self, fast: Weights, grads: Weights, step: int) -> Weights:
        return sgd_step(fast, grads, dict(zip(self.names, self.inner_lrs, strict=True)))


register_learner(
    "metasgd", MetaSGD, GradientMetaConfig, "Meta-SGD: learned per-parameter inner lrs"
)
