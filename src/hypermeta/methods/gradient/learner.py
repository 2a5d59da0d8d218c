"""`GradientMetaLearner`: the few-shot interface (methods/fewshot_base.py) of every
gradient-based meta-learner, built on the inner loop (inner_loop.py) and the task mapper
(tasks.py); `register_learner` registers a method for images and for sine regression.

The target network and the task loss come with the data (`for_data`) and are passed to
the learner, which never asks what kind of task it runs: Conv-4 with an N-way head and
cross-entropy for few-shot classification (`<name>`, engine kind `fewshot`), a 40-40 MLP
and MSE for sine regression (`<name>_regression`).

Batch-norm layers keep no running statistics (`nn/batch_stat_norm.py`): they normalise
with the statistics of the batch they are given, which is what lets vmap run over tasks.
Meta-training normalises the support set and the query batch each with its own; so does
the inner loop at meta-test. For the queries at meta-test the engine names the regime
through `meta_test(batchnorm)` (the few-shot engine's `eval.batchnorm`, recorded with
every result; fewshot_base.BATCHNORM_REGIMES): `transductive` normalises all queries of a
task together (MAML's protocol); `per_query` normalises each query with the support set
plus itself only, Nichol et al. (2018)'s non-transductive protocol for learners without
running statistics. MAML++ adds `per_step_stats`, its own per-step running statistics.

Engine contract (FewShotLearner's docstring): `on_iteration(i, total)` before every
meta-step (MAML++ anneals with it), `meta_step`, then `meta_test` + `test_logits` at
evaluation. `max_way` is the Conv-4 head's size; episodes with fewer ways use its first
columns. An outer-lr schedule (MAML++'s cosine annealing) is the engine's
`train.lr_schedule: cosine`, in both the few-shot and regression engines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import vmap

from hypermeta.config import StrictModel
from hypermeta.data.episodes import Episodes
from hypermeta.errors import HypermetaError
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.fewshot_base import BatchNormRegime, FewShotLearner
from hypermeta.methods.gradient.inner_loop import (
    Weights,
    adapt,
    add_gradients,
    meta_gradient,
    sgd_step,
)
from hypermeta.methods.gradient.tasks import TaskMapper
from hypermeta.nn import MLP, Conv4
from hypermeta.nn.batch_stat_norm import (
    BatchStatNorm,
    recorded_statistics,
    stacked_statistics,
    use_batch_statistics,
)

# A task loss: the mean loss of outputs against targets (cross-entropy, MSE).
TaskLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GradientMetaConfig(StrictModel):
    """The `model:` section shared by MAML, FOMAML, MAML++, Meta-SGD and Reptile."""

    n_way: int = Field(5, gt=1, description="classes the Conv-4 head outputs (few-shot only)")
    width: int = Field(64, gt=0, description="Conv-4 filters per layer (few-shot only)")
    mlp_hidden: list[int] = Field([40, 40], description="MLP hidden sizes (regression only)")
    inner_steps: int = Field(5, gt=0, description="inner gradient steps during meta-training")
    eval_inner_steps: int | None = Field(
        None, gt=0, description="inner steps at meta-test; default: inner_steps"
    )
    inner_lr: float = Field(0.4, gt=0, description="inner-loop step size (initial, if learned)")
    first_order: bool = Field(False, description="drop the inner loop's second derivatives")
    vectorize: bool | None = Field(
        None,
        description="vmap over the tasks of a meta-batch; default: yes, but not Conv-4 on a CPU",
    )
    task_chunk: int | None = Field(
        None, gt=0, description="tasks per backward pass in meta-training (bounds memory)"
    )
    task_workers: int | None = Field(
        None,
        gt=0,
        description="threads adapting a meta-batch's tasks side by side, one intra-op thread "
        "each (per-task loop only); default: torch's thread count",
    )


class GradientMetaLearner(FewShotLearner):
    """A target network adapted by the inner loop, queries predicted after any number of
    inner steps. `loss` scores the target's outputs; `max_way` is its class head's size
    (None: not a classifier). Subclasses change the update (`inner_update`), the weights a
    step runs with (`step_weights`), the derivative order, the outer loss, or keep running
    batch-norm statistics (`keeps_running_statistics`, `track_statistics`)."""

    batchnorm_regimes: ClassVar[tuple[BatchNormRegime, ...]] = ("transductive", "per_query")
    # A learner that keeps running batch-norm statistics (MAML++) sets this: meta-training
    # then records the statistics of every query forward for its `track_statistics`, and
    # its tasks run serially (the statistics are recorded on its one target).
    keeps_running_statistics: ClassVar[bool] = False

    def __init__(
        self,
        target: nn.Module,
        config: GradientMetaConfig,
        loss: TaskLoss,
        max_way: int | None = None,
    ) -> None:
        super().__init__()
        self.target = target
        self.config = config
        self.task_loss = loss
        self.max_way = max_way
        self.ways = max_way  # of the episodes being processed: head columns used
        self.has_batch_norm = any(isinstance(m, BatchStatNorm) for m in target.modules())
        self.tasks = TaskMapper(
            target, config.vectorize, config.task_workers, serial=self.keeps_running_statistics
        )
        self.batchnorm: BatchNormRegime = "transductive"  # at meta-test (meta_test)

    # ---- what subclasses vary -------------------------------------------------------
    def adapted_parameters(self) -> Weights:
        """The meta-learned initial weights the inner loop starts from."""
        return dict(self.target.named_parameters())

    def inner_update(self, fast: Weights, grads: Weights, step: int) -> Weights:
        """One inner SGD step with one scalar step size (MAML)."""
        return sgd_step(fast, grads, self.config.inner_lr)

    def step_weights(self, fast: Weights, step: int) -> Weights:
        """Every weight the target computes with at inner step `step` (MAML++ adds its
        per-step batch-norm weights here)."""
        return fast

    def second_order(self) -> bool:
        return self.training and not self.config.first_order

    def track_statistics(self, statistics: Weights, predicted_after: tuple[int, ...]) -> None:
        """Fold the batch statistics a meta-batch's query forwards normalised with, after
        each of `predicted_after` inner steps ((tasks, len(predicted_after), C) per name),
        into running estimates. Called only for `keeps_running_statistics` learners."""

    # ---- one task ---------------------------------------------------------------------
    def run_target(self, weights: Weights, x: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(self.tasks.module(), weights, (x,))
        return out if self.max_way is None else out[..., : self.ways]

    def trajectory(
        self, params: Weights, support_x: torch.Tensor, support_y: torch.Tensor, steps: int
    ) -> list[Weights]:
        """Fast weights of ONE task after 0, 1, ..., `steps` inner steps."""

        def support_loss(fast: Weights, step: int) -> torch.Tensor:
            return self.task_loss(
                self.run_target(self.step_weights(fast, step), support_x), support_y
            )

        return adapt(
            params,
            support_loss,
            self.inner_update,
            steps,
            self.second_order(),
            self.tasks.vectorizes(),
        )

    def predict(
        self, fast: Weights, support_x: torch.Tensor, query_x: torch.Tensor, step: int
    ) -> torch.Tensor:
        """The target's output on one task's queries with fast weights `fast`."""
        weights = self.step_weights(fast, step)
        if self.training or self.batchnorm != "per_query" or not self.has_batch_norm:
            return self.run_target(weights, query_x)

        def one_query(query: torch.Tensor) -> torch.Tensor:
            batch = torch.cat([support_x, query.unsqueeze(0)])
            return self.run_target(weights, batch)[-1]

        return vmap(one_query)(query_x)

    def _task_predictions(
        self,
        params: Weights,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        steps: int,
        predict_at: tuple[int, ...],
    ) -> tuple[torch.Tensor, Weights]:
        """Query outputs after each of `predict_at` inner steps and, when meta-training a
        learner that keeps running statistics, the batch statistics those query forwards
        normalised with (returned, not stored: this runs under vmap)."""
        path = self.trajectory(params, support_x, support_y, steps)
        record = self.training and self.keeps_running_statistics
        with recorded_statistics(self.target) if record else nullcontext({}) as recorded:
            predictions = torch.stack(
                [self.predict(path[s], support_x, query_x, query_step(s)) for s in predict_at]
            )
        return predictions, stacked_statistics(recorded)

    # ---- a meta-batch ---------------------------------------------------------------
    def take_ways(self, episodes: Episodes) -> None:
        """Use the head's first `episodes.n_way` columns; more than the head is an error."""
        if self.max_way is not None and episodes.n_way > self.max_way:
            raise HypermetaError(
                f"this model was built for at most {self.max_way} classes and cannot take "
                f"{episodes.n_way}; use at most {self.max_way} classes or a model trained "
                f"with model.n_way: {episodes.n_way}."
            )
        self.ways = episodes.n_way

    def query_predictions(
        self, episodes: Episodes, steps: int | None = None, predict_at: tuple[int, ...] = ()
    ) -> torch.Tensor:
        """(len(predict_at), B, N·Q, out): query outputs after each listed number of inner
        steps (default: only after all `steps`, which default to the phase's count)."""
        if steps is None:
            steps = self.config.inner_steps
            if not self.training and self.config.eval_inner_steps:
                steps = self.config.eval_inner_steps
        self.take_ways(episodes)
        predict_at = predict_at or (steps,)
        function = partial(self._task_predictions, steps=steps, predict_at=predict_at)
        out, statistics = self.tasks.map(
            function,
            self.adapted_parameters(),
            episodes.support_x,
            episodes.support_y,
            episodes.query_x,
        )
        if statistics:
            self.track_statistics(statistics, predict_at)
        return out.transpose(0, 1)

    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        return self.query_predictions(episodes)[-1]

    def test_logits(self, episodes: Episodes) -> torch.Tensor:
        """Meta-test logits without an outer graph: the inner gradients still adapt under
        no_grad (inner_loop.inner_gradients), so nothing is kept for a backward that never
        comes."""
        with torch.no_grad():
            return self.query_logits(episodes)

    # ---- outer loop -----------------------------------------------------------------
    def loss(self, episodes: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.query_logits(episodes)
        return self.mean_task_loss(out, episodes.query_y), out

    def mean_task_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task loss over every query of every task, (B, N·Q, ...) flattened."""
        return self.task_loss(out.flatten(0, 1), target.flatten(0, 1))

    def meta_step(self, episodes: Episodes, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One outer step. Task workers (`TaskMapper.parts`) each take a run of tasks,
        forward and backward, a `task_chunk` of tasks at a time (inner_loop.meta_gradient);
        their gradients are summed in task order."""
        tasks = len(episodes.support_x)
        params = [p for p in self.parameters() if p.requires_grad]

        def chunk_loss(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.loss(task_range(episodes, start, stop))

        def gradients(part: range) -> tuple[list[torch.Tensor | None], list, list]:
            return meta_gradient(chunk_loss, params, part, tasks, self.config.task_chunk)

        parts = self.tasks.in_workers(gradients, self.tasks.parts(tasks))
        optimizer.zero_grad(set_to_none=True)
        for index, param in enumerate(params):
            for summed, _, _ in parts:
                param.grad = add_gradients(param.grad, summed[index])
        losses = [loss for _, part_losses, _ in parts for loss in part_losses]
        outs = [out for _, _, part_outs in parts for out in part_outs]
        self.clip_meta_gradients(params)
        optimizer.step()
        return self.step_record(torch.stack(losses).sum(), torch.cat(outs), episodes)

    def clip_meta_gradients(self, params: list[torch.Tensor]) -> None:
        """Clip the summed meta-gradients before the outer step; none by default (the
        LSTM meta-learner clips their norm, as its paper)."""

    def step_record(self, loss: torch.Tensor, out: torch.Tensor, episodes: Episodes):
        """The meta-step's numbers for the training log: the loss, and a classifier's
        query accuracy."""
        record = {"loss": loss.item()}
        if self.max_way is not None:
            record["accuracy"] = (out.argmax(-1) == episodes.query_y).float().mean().item()
        return record

    @contextmanager
    def meta_test(self, batchnorm: BatchNormRegime) -> Iterator[None]:
        """Evaluation mode with queries normalised as the regime `batchnorm` says (see the
        module docstring); the support set always normalises with its own statistics.
        Restores the modes after."""
        self.check_batchnorm(batchnorm)
        was_training, was_regime = self.training, self.batchnorm
        self.eval()
        self.batchnorm = batchnorm
        try:
            yield
        finally:
            self.batchnorm = was_regime
            self.train(was_training)


def query_step(updates: int) -> int:
    """The inner step whose per-step weights the queries run with after `updates` inner
    updates: the last step taken, updates - 1 (MAML++'s indexing; none taken: step 0's)."""
    return max(updates - 1, 0)


def task_range(episodes: Episodes, start: int, stop: int) -> Episodes:
    """Tasks start to stop - 1 of a meta-batch."""
    return Episodes(
        episodes.support_x[start:stop],
        episodes.support_y[start:stop],
        episodes.query_x[start:stop],
        episodes.query_y[start:stop],
        n_way=episodes.n_way,
    )


def for_data(
    config: GradientMetaConfig, data_info: dict[str, Any]
) -> tuple[nn.Module, TaskLoss, int | None]:
    """The target network, task loss and class-head size the data asks for: for regression
    data an MLP and MSE, no head; for images Conv-4 with an `n_way` head and cross-entropy,
    its batch norm keeping no running statistics (module docstring)."""
    if data_info.get("task") == "regression":
        target = MLP(data_info["input_dim"], config.mlp_hidden, data_info["output_dim"])
        return target, F.mse_loss, None
    channels, height, _ = data_info["image_shape"]
    target = Conv4(channels, config.width, num_classes=config.n_way, image_size=height)
    return use_batch_statistics(target), F.cross_entropy, config.n_way


def register_learner(
    name: str,
    learner: type[GradientMetaLearner],
    config_type: type[GradientMetaConfig],
    summary: str,
    **forced: Any,
) -> None:
    """Register `name` (kind `fewshot`, on images) and `name_regression` (kind
    `regression`, on sine tasks): one learner class, two data kinds (`for_data`). `forced`
    fixes config fields that define the method (FOMAML is MAML with `first_order=True`)."""

    def build(config: GradientMetaConfig, data_info: dict[str, Any]) -> nn.Module:
        config = config.model_copy(update=forced)
        target, loss, max_way = for_data(config, data_info)
        return learner(target, config, loss, max_way)

    for suffix, kind in (("", "fewshot"), ("_regression", "regression")):
        register(
            MethodSpec(
                name=f"{name}{suffix}",
                kind=kind,
                model_config=config_type,
                build=build,
                summary=summary,
            )
        )
