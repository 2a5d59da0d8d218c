"""Running a per-task function over the tasks of a meta-batch: vmapped, a plain loop, or
the loop on task-worker threads; the same numbers each way, up to the order of sums.

`torch.func.vmap` (inner gradients by `torch.func.grad`) is the default, except for a
convolutional target on a CPU, which is looped over with `torch.autograd.grad`: vmap
turns per-task conv weights into grouped convolutions, slow on a CPU (quick pipeline, 2
cores: Reptile's evaluation 80 s vmapped, 55 s looped, MAML's 35 s and 22 s; the whole
MAML evaluation job 27.7 s looped with torch.func.grad, 20.6 s with autograd;
meta-training 1.8x faster looped at meta-batch 32, benchmarks/bench_maml.py), while the
sine MLP gains from vmap (MAML's training 10 s vmapped, 67 s looped).

The loop runs on task workers: one thread per intra-op thread torch was given, each
taking a contiguous run of the meta-batch's tasks with one intra-op thread. Looping over
tasks runs many small operations that an intra-op thread pool speeds up little (or
slows); whole tasks on separate threads use the cores fully. With one thread (the
pipeline's single-threaded jobs) nothing changes. On 2 cores that made a second-order
meta-iteration 1.25x faster than `higher`, against 1.01x for one loop. Results and their
order are those of the loop.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, pairwise
from typing import Any

import torch
from torch import nn
from torch.func import vmap

# In a task-worker thread: that thread's twin of the target network. functional_call swaps
# weights into the module it is given, so threads must not share one.
_worker = threading.local()


def worker_target() -> nn.Module | None:
    """This task-worker thread's twin of the target; None outside task workers."""
    return getattr(_worker, "target", None)


def stack_tasks(results: list[Any]) -> Any:
    """Per-task results (tensors, or dicts and tuples of them) stacked along a new first
    dimension, as vmap returns them."""
    first = results[0]
    if isinstance(first, tuple):
        return tuple(stack_tasks(list(parts)) for parts in zip(*results, strict=True))
    if isinstance(first, dict):
        return {name: torch.stack([r[name] for r in results]) for name in first}
    return torch.stack(results)


class TaskMapper:
    """Maps a function over the tasks of a meta-batch for a learner adapting `target`.

    `vectorize`: vmap over tasks (None: yes, unless the target convolves on a CPU).
    `workers`: task-worker threads for the loop (None: torch's intra-op thread count).
    `serial`: one worker whatever `workers` says, for a learner that records state on its
    one target while tasks run (MAML++'s batch-norm statistics)."""

    def __init__(
        self,
        target: nn.Module,
        vectorize: bool | None = None,
        workers: int | None = None,
        serial: bool = False,
    ) -> None:
        self.target = target
        self.vectorize = vectorize
        self.workers = workers
        self.serial = serial
        self.convolves = any(isinstance(m, nn.Conv2d) for m in target.modules())

    def vectorizes(self) -> bool:
        """Whether tasks are vmapped (else looped over, on task workers when there are several)."""
        if self.vectorize is not None:
            return self.vectorize
        return not self.convolves or next(self.target.parameters()).is_cuda

    def module(self) -> nn.Module:
        """The target for this thread to run: its task worker's twin, or the target itself."""
        return worker_target() or self.target

    def map(
        self,
        function: Callable[..., Any],
        params: Any,
        *batched: torch.Tensor,
        params_per_task: bool = False,
    ) -> Any:
        """`function(params, *one_task)` for every task, stacked as vmap stacks it. `params`
        is shared by all tasks, or (`params_per_task`) has a leading task dimension."""
        if self.vectorizes():
            in_dims = (0 if params_per_task else None,) + (0,) * len(batched)
            return vmap(function, in_dims=in_dims)(params, *batched)

        def run(tasks: range) -> list[Any]:
            results = []
            for index in tasks:
                task_params = params
                if params_per_task:
                    task_params = {n: w[index] for n, w in params.items()}
                results.append(function(task_params, *(b[index] for b in batched)))
            return results

        parts = self.in_workers(run, self.parts(len(batched[0])))
        return stack_tasks(list(chain.from_iterable(parts)))

    def parts(self, tasks: int) -> list[range]:
        """Contiguous runs of task indices, one per task worker."""
        workers = self.workers or torch.get_num_threads()
        in_worker = worker_target() is not None  # no workers within workers
        if in_worker or self.serial or self.vectorizes():
            workers = 1
        workers = max(1, min(workers, tasks))
        bounds = [round(i * tasks / workers) for i in range(workers + 1)]
        return [range(a, b) for a, b in pairwise(bounds)]

    def in_workers(self, job: Callable[[range], Any], parts: Sequence[range]) -> list[Any]:
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
