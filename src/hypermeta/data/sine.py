"""MAML's sine-regression task distribution (Finn et al. 2017, §5.1): a task is
y = A·sin(x − φ) with amplitude A ~ U[0.1, 5] and phase φ ~ U[0, π]; inputs x ~ U[−5, 5].

Tasks are drawn fresh for every meta-batch from a seeded generator, so there is nothing
to download or decode: the split stage writes only a manifest that describes the
distribution (and tells methods this is a regression dataset), and the evaluation set
is a fixed seeded draw (`evaluation_tasks`), the same for every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from hypermeta.config import SplitConfig
from hypermeta.data.episodes import Episodes
from hypermeta.data.prepare import Prepared, preparer
from hypermeta.data.registry import DatasetSpec

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


@dataclass
class SineTasks:
    """A batch of sine tasks: amplitude and phase, each (B,)."""

    amplitude: torch.Tensor
    phase: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Targets for inputs x of shape (B, P, 1)."""
        return self.amplitude.view(-1, 1, 1) * torch.sin(x - self.phase.view(-1, 1, 1))


def _uniform(shape: tuple[int, ...], bounds: tuple[float, float], g: torch.Generator):
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=g)


def sample_tasks(n_tasks: int, generator: torch.Generator) -> SineTasks:
    return SineTasks(
        _uniform((n_tasks,), AMPLITUDE, generator), _uniform((n_tasks,), PHASE, generator)
    )


def sample_episodes(
    tasks: SineTasks, k_shot: int, n_query: int, generator: torch.Generator
) -> Episodes:
    """K support and `n_query` query points per task, as (B, P, 1) tensors."""
    n_tasks = len(tasks.amplitude)
    support_x = _uniform((n_tasks, k_shot, 1), X_RANGE, generator)
    query_x = _uniform((n_tasks, n_query, 1), X_RANGE, generator)
    return Episodes(support_x, tasks(support_x), query_x, tasks(query_x), n_way=0)


def evaluation_tasks(
    n_tasks: int, max_shot: int, n_query: int, seed: int
) -> tuple[SineTasks, Episodes]:
    """A fixed, seeded evaluation set; K-shot evaluation uses the first K support points
    of each task (`with_shots`), so the K = 5 set is nested in the K = 10 one."""
    generator = torch.Generator().manual_seed(seed)
    tasks = sample_tasks(n_tasks, generator)
    return tasks, sample_episodes(tasks, max_shot, n_query, generator)


def with_shots(episodes: Episodes, k_shot: int) -> Episodes:
    return Episodes(
        episodes.support_x[:, :k_shot],
        episodes.support_y[:, :k_shot],
        episodes.query_x,
        episodes.query_y,
        episodes.n_way,
    )


@preparer("sine")
def prepare_sine(spec: DatasetSpec, raw_dir: Path, split: SplitConfig) -> Prepared:
    return Prepared(
        splits={},
        info={
            "task": "regression",
            "input_dim": 1,
            "output_dim": 1,
            "distribution": "y = A sin(x - phase)",
            "amplitude_range": list(AMPLITUDE),
            "phase_range": list(PHASE),
            "x_range": list(X_RANGE),
            "split_summary": "tasks drawn afresh from a seeded distribution (no split)",
        },
    )
