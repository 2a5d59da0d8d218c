"""Reptile (Nichol, Achiam & Schulman 2018): adapt to each task with plain SGD, then move
the initial weights toward the mean of the adapted ones. No second derivatives, no query
loss in training; evaluation adapts on the support set like MAML, in the batch-norm
regime the engine's `meta_test(batchnorm)` names (gradient/learner.py): `per_query`, the
support set plus one query, is the paper's non-transductive protocol."""

from __future__ import annotations

import torch
from pydantic import Field

from hypermeta.data.episodes import Episodes
from hypermeta.methods.gradient.learner import (
    GradientMetaConfig,
    GradientMetaLearner,
    register_learner,
)


class ReptileConfig(GradientMetaConfig):
    inner_lr: float = Field(0.1, gt=0, description="inner SGD step size")
    first_order: bool = Field(True, description="always first order (the value is ignored)")


class Reptile(GradientMetaLearner):
    def second_order(self) -> bool:
        return False

    def meta_step(self, episodes: Episodes, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Set grad = θ − mean adapted θ, so an SGD optimizer with lr ε takes exactly the
        Reptile step θ ← θ + ε(mean φ − θ) (Adam gives the Adam-preconditioned variant)."""
        self.take_ways(episodes)
        params = self.adapted_parameters()
        detached = {name: p.detach() for name, p in params.items()}

        def adapt(initial, support_x, support_y):
            return self.trajectory(initial, support_x, support_y, self.config.inner_steps)[-1]

        adapted = self.tasks.map(adapt, detached, episodes.support_x, episodes.support_y)
        optimizer.zero_grad(set_to_none=True)
        for name, p in params.items():
            p.grad = p.detach() - adapted[name].mean(0)
        optimizer.step()
        with torch.no_grad():  # how well the adapted weights do on the queries: for the log
            out = self.tasks.map(
                lambda fast, sx, qx: self.predict(fast, sx, qx, self.config.inner_steps - 1),
                adapted,
                episodes.support_x,
                episodes.query_x,
                params_per_task=True,
            )
            loss = self.mean_task_loss(out, episodes.query_y)
        return self.step_record(loss, out, episodes)


register_learner(
    "reptile", Reptile, ReptileConfig, "Reptile: first-order, move toward adapted weights"
)
