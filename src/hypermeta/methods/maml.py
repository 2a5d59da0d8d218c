"""MAML (Finn et al. 2017) with true second-order meta-gradients, first-order MAML, and
the functional inner loop every gradient-based meta-learner here shares.

In the spirit of learn2learn's maml.py: one functional update, thin wrappers. Fast
weights are the project's one weight mechanism (DESIGN.md): a dict of named tensors
shaped like the target's parameters, run through `torch.func.functional_call`. The
tasks of a meta-batch are vectorised with `torch.func.vmap` (inner gradients by
`torch.func.grad`), except a convolutional target on a CPU, which loops over them with
`torch.autograd.grad` (`vectorize`, same numbers either way): vmap turns per-task conv
weights into grouped convolutions, slow on a CPU (quick pipeline, 2 cores: Reptile's
evaluation 80 s vmapped, 55 s looped, MAML's 35 s and 22 s; the whole MAML evaluation
job 27.7 s looped with torch.func.grad, 20.6 s with autograd; meta-training 1.8x faster
looped at meta-batch 32, benchmarks/bench_maml.py), while the sine MLP gains from vmap
(MAML's training 10 s vmapped, 67 s looped).
The loop runs on task workers: one thread per intra-op thread torch was given, each
taking a run of the meta-batch's tasks with one intra-op thread (`task_workers`; one in
the pipeline's single-threaded jobs, where nothing changes; MAML++, which records
statistics on its one target, stays serial). On 2 cores that made a second-order
meta-iteration 1.25x faster than `higher`, against 1.01x for one loop.

Batch-norm layers keep no running statistics (`nn/batch_stat_norm.py`): they normalise
with the statistics of the batch they are given, which is what lets vmap run over tasks.
At meta-test the engine says which batch that is for the queries, through
`meta_test(batchnorm)` (the few-shot engine's `eval.batchnorm`, recorded with every
result): `transductive` normalises all queries of a task together (MAML's protocol);
the non-transductive mode (`running` in the engine's vocabulary: each query classified
on its own) normalises each query with the support set plus itself only, Nichol et al.
(2018)'s non-transductive protocol, since these learners have no running statistics.
MAML++ is the exception: it keeps per-step running statistics of the queries itself and
normalises queries with them in that mode (mamlpp.py). Meta-training always normalises
the query batch together.

Engine contract (the few-shot engine's, FewShotLearner's docstring): `on_iteration(i,
total)` before every meta-step (MAML++ anneals with it), `meta_step`, then `meta_test` +
`query_logits` at evaluation. `max_way` is the Conv-4 head's size; episodes with fewer
ways use its first columns. An outer-lr schedule (MAML++'s cosine annealing) is the
engine's `train.lr_schedule: cosine`, in both the few-shot and regression engines.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from functools import partial
from itertools import chain, pairwise
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call, grad, vmap

from hypermeta.config import StrictModel
from hypermeta.errors import HypermetaError
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.fewshot_base import Episodes, FewShotLearner
from hypermeta.nn import MLP, Conv4
from hypermeta.nn.batch_stat_norm import (
    BatchStatNorm,
    recorded_statistics,
    stacked_statistics,
    use_batch_statistics,
)

Weights = dict[str, torch.Tensor]

# In a task-worker thread (GradientMetaLearner.in_task_workers): that thread's twin of the
# target network. functional_call swaps weights into the module it is given, so threads
# must not share one.
_worker = threading.local()


def worker_target() -> nn.Module | None:
    """This task-worker thread's twin of the target; None outside task workers."""
    return getattr(_worker, "target", None)


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


def build_target(config: GradientMetaConfig, data_info: dict[str, Any]) -> nn.Module:
    """The network whose weights are adapted: a 40-40 MLP for regression data, Conv-4
    with an N-way head for images. Batch norm keeps no running statistics (see above)."""
    if data_info.get("task") == "regression":
        return MLP(data_info["input_dim"], config.mlp_hidden, data_info["output_dim"])
    channels, height, _ = data_info["image_shape"]
    target = Conv4(channels, config.width, num_classes=config.n_way, image_size=height)
    return use_batch_statistics(target)


class GradientMetaLearner(FewShotLearner):
    """The shared machinery: a target network, an inner loop producing fast-weight dicts,
    and query predictions after any number of inner steps. Subclasses change the update
    (`inner_update`), the weights a step runs with (`step_weights`), the outer loss, or
    keep running batch-norm statistics (`keeps_running_statistics`, `track_statistics`)."""

    def __init__(self, target: nn.Module, config: GradientMetaConfig, task: str) -> None:
        super().__init__()
        self.target = target
        self.config = config
        self.task = task
        self.has_batch_norm = any(isinstance(m, BatchStatNorm) for m in target.modules())
        self.has_convolutions = any(isinstance(m, nn.Conv2d) for m in target.modules())
        self.max_way = config.n_way if task == "classification" else None
        self.ways = config.n_way  # of the episodes being processed: head columns used
        self.transductive = True  # how queries are normalised at meta-test (meta_test)
        self._vmapping = False  # inside over_tasks' vmap: inner gradients by torch.func

    # A learner that keeps running batch-norm statistics (MAML++) sets this: meta-training
    # then records the statistics of every query forward for its `track_statistics`.
    keeps_running_statistics = False

    # ---- what subclasses vary -------------------------------------------------------
    def adapted_parameters(self) -> Weights:
        """The meta-learned initial weights the inner loop starts from."""
        return dict(self.target.named_parameters())

    def inner_update(self, fast: Weights, grads: Weights, step: int) -> Weights:
        """One inner SGD step with one scalar step size (MAML)."""
        lr = self.config.inner_lr
        return {name: w - lr * grads[name] for name, w in fast.items()}

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

    # ---- the functional inner loop --------------------------------------------------
    def task_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == "regression":
            return F.mse_loss(output, target)
        return F.cross_entropy(output, target)

    def run_target(self, weights: Weights, x: torch.Tensor) -> torch.Tensor:
        out = functional_call(worker_target() or self.target, weights, (x,))
        return out[..., : self.ways] if self.task == "classification" else out

    def _support_loss(self, fast: Weights, x: torch.Tensor, y: torch.Tensor, step: int):
        return self.task_loss(self.run_target(self.step_weights(fast, step), x), y)

    def trajectory(
        self, params: Weights, support_x: torch.Tensor, support_y: torch.Tensor, steps: int
    ) -> list[Weights]:
        """Fast weights of ONE task after 0, 1, ..., `steps` inner steps.

        With second order the inner gradients stay in the graph, so the outer backward
        differentiates through them; first order detaches them (FOMAML)."""
        keep_graph = self.second_order()
        fast, path = params, [params]
        for step in range(steps):
            grads = self._inner_gradients(fast, support_x, support_y, step, keep_graph)
            fast = self.inner_update(fast, grads, step)
            path.append(fast)
        return path

    def _inner_gradients(
        self, fast: Weights, x: torch.Tensor, y: torch.Tensor, step: int, keep_graph: bool
    ) -> Weights:
        """∇ of the support loss at `fast`. Under vmap that takes `torch.func.grad`; a
        plain loop over tasks uses `torch.autograd.grad`, the same numbers without
        functorch's per-operation wrapping (and without importing torch._dynamo, about
        1.4 s of every pipeline job that adapts)."""
        if self._vmapping:
            grads = grad(self._support_loss)(fast, x, y, step)
            return grads if keep_graph else {n: g.detach() for n, g in grads.items()}
        with torch.enable_grad():  # meta-test adapts under no_grad
            start = {
                n: w if w.requires_grad else w.detach().requires_grad_() for n, w in fast.items()
            }
            loss = self._support_loss(start, x, y, step)
            grads = torch.autograd.grad(
                loss, list(start.values()), create_graph=keep_graph, materialize_grads=True
            )
        return dict(zip(start, grads, strict=True))

    def predict(
        self, fast: Weights, support_x: torch.Tensor, query_x: torch.Tensor, step: int
    ) -> torch.Tensor:
        """The target's output on one task's queries with fast weights `fast`."""
        weights = self.step_weights(fast, step)
        if self.training or self.transductive or not self.has_batch_norm:
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

    def vectorizes(self) -> bool:
        """Whether tasks are vmapped (else looped over, on task workers when there are several)."""
        if self.config.vectorize is not None:
            return self.config.vectorize
        return not self.has_convolutions or next(self.target.parameters()).is_cuda

    def over_tasks(
        self, function, params: Weights, *batched: torch.Tensor, params_per_task: bool = False
    ):
        """`function(params, *one_task)` for every task: vmapped, or a plain loop. `params`
        is shared by all tasks, or (`params_per_task`) has a leading task dimension."""
        if self.vectorizes():
            in_dims = (0 if params_per_task else None,) + (0,) * len(batched)
            self._vmapping = True
            try:
                return vmap(function, in_dims=in_dims)(params, *batched)
            finally:
                self._vmapping = False

        def run(tasks: range) -> list[Any]:
            results = []
            for index in tasks:
                task_params = params
                if params_per_task:
                    task_params = {n: w[index] for n, w in params.items()}
                results.append(function(task_params, *(b[index] for b in batched)))
            return results

        parts = self.in_task_workers(run, self.task_parts(len(batched[0])))
        return stack_tasks(list(chain.from_iterable(parts)))

    # ---- task workers: the tasks of a meta-batch side by side on a CPU ------------------
    # Looping over tasks runs many small operations that an intra-op thread pool speeds up
    # little (or slows); whole tasks on separate threads, one intra-op thread each, use the
    # cores fully (benchmarks/bench_maml.py). Results and their order are those of the loop.
    def task_parts(self, tasks: int) -> list[range]:
        """Contiguous runs of task indices, one per task worker."""
        workers = self.config.task_workers or torch.get_num_threads()
        in_worker = worker_target() is not None  # no workers within workers
        if in_worker or self.keeps_running_statistics or self.vectorizes():
            workers = 1  # (MAML++ records statistics on the one target: it stays serial)
        workers = max(1, min(workers, tasks))
        bounds = [round(i * tasks / workers) for i in range(workers + 1)]
        return [range(a, b) for a, b in pairwise(bounds)]

    def in_task_workers(self, job: Callable[[range], Any], parts: Sequence[range]) -> list[Any]:
        """`[job(part) for part in parts]`, the parts on threads of their own when there are
        several: each thread with its own twin of the target (sharing its parameters), the
        caller's grad mode, and one intra-op thread."""
        if len(parts) == 1:
            return [job(parts[0])]
        shared = {id(t): t for t in chain(self.target.parameters(), self.target.buffers())}
        twins = [copy.deepcopy(self.target, memo=dict(shared)) for _ in parts]
        grad_enabled = torch.is_grad_enabled()

        def run(twin: nn.Module, part: range) -> Any:
            _worker.target = twin
            try:
                with torch.set_grad_enabled(grad_enabled):
                    return job(part)
            finally:
                _worker.target = None

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(len(parts)) as pool:
                return list(pool.map(run, twins, parts))
        finally:
            torch.set_num_threads(threads)

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
        out, statistics = self.over_tasks(
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
        no_grad (`_inner_gradients`), so nothing is kept for a backward that never comes."""
        with torch.no_grad():
            return self.query_logits(episodes)

    # ---- outer loop -----------------------------------------------------------------
    def loss(self, episodes: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.query_logits(episodes)
        return self._mean_task_loss(out, episodes.query_y), out

    def _mean_task_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.task_loss(out.flatten(0, 1), target.flatten(0, 1))

    def meta_step(self, episodes: Episodes, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One outer step. With `task_chunk`, the meta-batch is processed (and its graph
        freed) a chunk of tasks at a time; gradients add up to the whole batch's, since
        the loss is a mean over equally sized tasks. Task workers (`task_parts`) each take
        a run of tasks, forward and backward; their gradients are summed in task order."""
        tasks = len(episodes.support_x)
        fields = (episodes.support_x, episodes.support_y, episodes.query_x, episodes.query_y)
        params = [p for p in self.parameters() if p.requires_grad]

        def gradients(part: range) -> tuple[list[torch.Tensor | None], list, list]:
            size = self.config.task_chunk or len(part)
            summed: list[torch.Tensor | None] = [None] * len(params)
            losses, outs = [], []
            for start in range(part.start, part.stop, size):
                stop = min(start + size, part.stop)
                chunk = Episodes(*(t[start:stop] for t in fields), n_way=episodes.n_way)
                share = (stop - start) / tasks
                loss, out = self.loss(chunk)
                grads = torch.autograd.grad(loss * share, params, allow_unused=True)
                summed = [add_gradients(a, b) for a, b in zip(summed, grads, strict=True)]
                losses.append(loss.detach() * share)
                outs.append(out.detach())
            return summed, losses, outs

        parts = self.in_task_workers(gradients, self.task_parts(tasks))
        optimizer.zero_grad(set_to_none=True)
        for index, param in enumerate(params):
            for summed, _, _ in parts:
                param.grad = add_gradients(param.grad, summed[index])
        losses = [loss for _, part_losses, _ in parts for loss in part_losses]
        outs = [out for _, _, part_outs in parts for out in part_outs]
        optimizer.step()
        return self.step_record(torch.stack(losses).sum(), torch.cat(outs), episodes)

    def step_record(self, loss: torch.Tensor, out: torch.Tensor, episodes: Episodes):
        record = {"loss": loss.item()}
        if self.task == "classification":
            record["accuracy"] = (out.argmax(-1) == episodes.query_y).float().mean().item()
        return record

    # ---- engine hooks (see the module docstring) --------------------------------------
    def on_iteration(self, iteration: int, total: int) -> None:
        """Called by the engine before meta-iteration `iteration` (0-based) of `total`."""

    @contextmanager
    def meta_test(self, batchnorm: str) -> Iterator[None]:
        """Evaluation mode; queries normalised together (`transductive`) or, in any other
        mode (the engine's `running`), each with the support set only, or with the running
        statistics of a learner that keeps them. The support set always normalises with
        its own statistics. Restores the modes after."""
        was_training, was_transductive = self.training, self.transductive
        self.eval()
        self.transductive = batchnorm == "transductive"
        try:
            yield
        finally:
            self.transductive = was_transductive
            self.train(was_training)


def query_step(updates: int) -> int:
    """The inner step whose per-step weights the queries run with after `updates` inner
    updates: the last step taken, updates - 1 (MAML++'s indexing; none taken: step 0's)."""
    return max(updates - 1, 0)


def add_gradients(total: torch.Tensor | None, more: torch.Tensor | None) -> torch.Tensor | None:
    """Sum of two gradients, where None (a parameter the loss did not reach) adds nothing."""
    if more is None:
        return total
    return more if total is None else total + more


def stack_tasks(results: list[Any]) -> Any:
    """Per-task results (tensors, or dicts and tuples of them) stacked along a new first
    dimension, as vmap returns them."""
    first = results[0]
    if isinstance(first, tuple):
        return tuple(stack_tasks(list(parts)) for parts in zip(*results, strict=True))
    if isinstance(first, dict):
        return {name: torch.stack([r[name] for r in results]) for name in first}
    return torch.stack(results)


class MAML(GradientMetaLearner):
    """MAML: one scalar inner learning rate; second order unless `first_order`."""


def task_of(data_info: dict[str, Any]) -> str:
    return "regression" if data_info.get("task") == "regression" else "classification"


def register_learner(
    name: str,
    learner: type[GradientMetaLearner],
    config_type: type[GradientMetaConfig],
    summary: str,
    **forced: Any,
) -> None:
    """Register `name` (kind `fewshot`, Conv-4 on images) and `name_regression` (kind
    `regression`, MLP on sine tasks): one learner class, two data kinds. `forced` fixes
    config fields that define the method (FOMAML is MAML with `first_order=True`)."""

    def build(config: GradientMetaConfig, data_info: dict[str, Any]) -> nn.Module:
        config = config.model_copy(update=forced)
        return learner(build_target(config, data_info), config, task_of(data_info))

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


register_learner("maml", MAML, GradientMetaConfig, "MAML, second-order meta-gradient (Finn 2017)")
register_learner(
    "fomaml", MAML, GradientMetaConfig, "first-order MAML (Finn 2017)", first_order=True
)
