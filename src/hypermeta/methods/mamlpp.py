"""MAML++ (Antoniou, Edwards & Storkey 2019, "How to train your MAML"): MAML with

- multi-step loss (MSL): the outer loss weighs the query loss after every inner step,
  annealed from uniform to the last step only over the first `multi_step_loss_fraction`
  of training;
- learned per-layer per-step inner learning rates (LSLR), one per parameter tensor and step;
- per-step batch-norm weights and biases (BNWB), meta-learned, not adapted in the loop;
- per-step batch-norm running statistics (BNRS): a running mean and variance per layer and
  inner step of the query forwards, moved by `bn_momentum` after every meta-training
  forward toward the mean over the meta-batch of the statistics each task's query batch
  was normalised with;
- derivative-order annealing (DA): first order for the first `first_order_fraction` of
  training, second order after;
- cosine annealing of the outer learning rate (CA): the engine's `train.lr_schedule: cosine`.

Meta-training normalises with batch statistics, as every learner here. At meta-test,
`eval.batchnorm: per_step_stats` normalises the queries with the running statistics of
the step they are predicted at (each query on its own, in one batched pass),
`transductive` with the query batch's, and `per_query` each with the support set plus
itself, as the other gradient learners. The support set keeps its own batch statistics in
the inner loop in all three: normalising it with fixed statistics also drops the gradient
through them and changes the adaptation itself (on test_mamlpp.py's 5-way toy tasks, a
trained model fell from 98% to 24% when its support set was normalised with even its own
exact statistics held fixed). Rows are kept per step the queries can be predicted at; once MSL has
annealed only the last step's is still updated, the only one the engine's evaluation
uses. The authors' released code calls `F.batch_norm(..., training=True)` at meta-test
too, so their reported numbers are transductive: the statistics are collected, not used.

Under vmap the statistics cannot be updated in place inside the per-task function: each
task returns those its query forwards normalised with (recorded by the layers, see
`GradientMetaLearner._task_predictions`) and they are folded in once per meta-batch,
outside vmap (`track_statistics`). The layers stay pure: the estimates reach them through
`functional_call`, like the per-step weights.
The engine drives DA and MSL through the `on_iteration` hook (gradient/learner.py's docstring).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from hypermeta.data.episodes import Episodes
from hypermeta.hyper import take_parameters
from hypermeta.methods.gradient.inner_loop import Weights, sgd_step
from hypermeta.methods.gradient.learner import (
    GradientMetaConfig,
    GradientMetaLearner,
    TaskLoss,
    query_step,
    register_learner,
)
from hypermeta.nn.batch_stat_norm import BatchStatNorm


class MAMLPlusPlusConfig(GradientMetaConfig):
    multi_step_loss_fraction: float = Field(
        0.1, ge=0, le=1, description="share of training over which MSL anneals to the last step"
    )
    first_order_fraction: float = Field(
        0.33, ge=0, le=1, description="share of training run first order (DA)"
    )
    bn_momentum: float = Field(
        0.1, gt=0, le=1, description="per-step running statistics: weight of each meta-batch"
    )


class StepStatistics(nn.Module):
    """Running mean and variance of one batch-norm layer's input in the query forwards,
    a row per inner step."""

    def __init__(self, steps: int, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(steps, channels))
        self.register_buffer("var", torch.ones(steps, channels))


class MAMLPlusPlus(GradientMetaLearner):
    keeps_running_statistics = True  # per step, of the queries (BNRS)
    batchnorm_regimes = ("transductive", "per_query", "per_step_stats")

    def __init__(
        self,
        target: nn.Module,
        config: MAMLPlusPlusConfig,
        loss: TaskLoss,
        max_way: int | None = None,
    ) -> None:
        super().__init__(target, config, loss, max_way)
        steps = config.inner_steps
        initial = {name: p.detach().clone() for name, p in target.named_parameters()}
        self.norm_layers = [
            name for name, module in target.named_modules() if isinstance(module, BatchStatNorm)
        ]
        norm_names = [
            f"{layer}.{attr}" for layer in self.norm_layers for attr in ("weight", "bias")
        ]
        take_parameters(target, norm_names)  # now supplied per step, below
        self.norm_names = norm_names
        self.per_step_norm = nn.ParameterList(
            nn.Parameter(initial[name].expand(steps, *initial[name].shape).clone())
            for name in norm_names
        )
        self.running_statistics = nn.ModuleList(
            StepStatistics(steps, len(initial[f"{layer}.weight"])) for layer in self.norm_layers
        )
        self.names = [name for name, _ in target.named_parameters()]
        self.inner_lrs = nn.Parameter(torch.full((len(self.names), steps), config.inner_lr))
        self.progress = 1.0  # share of meta-training done; 1 = the final, annealed behaviour

    def _step_index(self, step: int) -> int:
        # Evaluation may run more steps than training learned weights for: reuse the last.
        return min(step, self.config.inner_steps - 1)

    def step_weights(self, fast: Weights, step: int) -> Weights:
        index = self._step_index(step)
        per_step = {
            name: table[index]
            for name, table in zip(self.norm_names, self.per_step_norm, strict=True)
        }
        return fast | per_step

    def predict(
        self, fast: Weights, support_x: torch.Tensor, query_x: torch.Tensor, step: int
    ) -> torch.Tensor:
        if self.training or self.batchnorm != "per_step_stats":
            return super().predict(fast, support_x, query_x, step)
        index = self._step_index(step)
        running = {}
        for layer, statistics in zip(self.norm_layers, self.running_statistics, strict=True):
            running[f"{layer}.running_mean"] = statistics.mean[index]
            running[f"{layer}.running_var"] = statistics.var[index]
        return self.run_target(self.step_weights(fast, step) | running, query_x)

    def track_statistics(self, statistics: Weights, predicted_after: tuple[int, ...]) -> None:
        """Move each predicted step's estimate toward the mean over the meta-batch's tasks:
        at meta-test it stands in for what one task's query batch would give."""
        momentum = self.config.bn_momentum
        with torch.no_grad():
            for position, updates in enumerate(predicted_after):
                index = self._step_index(query_step(updates))
                for layer, running in zip(self.norm_layers, self.running_statistics, strict=True):
                    mean = statistics[f"{layer}.running_mean"][:, position].float().mean(0)
                    var = statistics[f"{layer}.running_var"][:, position].float().mean(0)
                    running.mean[index].lerp_(mean, momentum)
                    running.var[index].lerp_(var, momentum)

    def inner_update(self, fast: Weights, grads: Weights, step: int) -> Weights:
        lrs = self.inner_lrs[:, self._step_index(step)]
        return sgd_step(fast, grads, {name: lrs[i] for i, name in enumerate(self.names)})

    def second_order(self) -> bool:
        annealed = self.progress >= self.config.first_order_fraction
        return self.training and not self.config.first_order and annealed

    def step_loss_weights(self) -> torch.Tensor:
        """Importance of the query loss after inner step 1..S: uniform at the start,
        all on the last step once `multi_step_loss_fraction` of training is done; the
        earlier steps keep a floor of 0.03/S until then (as the authors' code)."""
        steps = self.config.inner_steps
        span = self.config.multi_step_loss_fraction
        remaining = max(1 - self.progress / span, 0.0) if span > 0 else 0.0
        if remaining == 0.0:
            return torch.eye(steps)[-1]
        early = max(remaining / steps, 0.03 / steps)
        weights = torch.full((steps,), early)
        weights[-1] = 1 - early * (steps - 1)
        return weights

    def loss(self, episodes: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return super().loss(episodes)
        steps = self.config.inner_steps
        weights = self.step_loss_weights()
        needed = tuple(s + 1 for s in range(steps) if weights[s] > 0)
        outs = self.query_predictions(episodes, steps, predict_at=needed)
        losses = torch.stack([self.mean_task_loss(out, episodes.query_y) for out in outs])
        return (weights[[s - 1 for s in needed]].to(losses) * losses).sum(), outs[-1]

    def on_iteration(self, iteration: int, total: int) -> None:
        self.progress = iteration / max(total, 1)


register_learner("mamlpp", MAMLPlusPlus, MAMLPlusPlusConfig, "MAML++ (Antoniou et al. 2019)")
