"""How well a continual learner knows its tasks: per-example correctness with the task
given (CL1) or inferred (CL2, CL3), and the accuracy matrix R over the sequence."""

from __future__ import annotations

from typing import Any

import torch

from hypermeta.continual.learner import ContinualLearner
from hypermeta.data.continual import TaskSequence


@torch.no_grad()
def task_correctness(
    learner: ContinualLearner, data: TaskSequence, task: int, batch_size: int
) -> torch.Tensor:
    """Per-example correctness (bool) on `task` with its task identity given (CL1)."""
    learner.eval()
    hits = [learner(x, task).argmax(1) == y for x, y in data.batches(task, batch_size)]
    learner.train()
    return torch.cat(hits).cpu()


@torch.no_grad()
def inferred_task_correctness(
    learner: ContinualLearner, data: TaskSequence, task: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Task unknown: take the task identity whose prediction has the lowest entropy.

    Returns per-example (label right: CL2, task and label right: CL3)."""
    learner.eval()
    label_hits, both_hits = [], []
    for x, y in data.batches(task, batch_size):
        logits = learner.all_task_logits(x)  # (tasks, N, classes)
        log_p = torch.log_softmax(logits.float(), -1)
        entropy = -(log_p.exp() * log_p).sum(-1)  # (tasks, N)
        chosen = entropy.argmin(0)
        predicted = logits[chosen, torch.arange(len(x), device=x.device)].argmax(-1)
        label_hits.append(predicted == y)
        both_hits.append((predicted == y) & (chosen == task))
    learner.train()
    return torch.cat(label_hits).cpu(), torch.cat(both_hits).cpu()


def mean_matrix(saved: dict[str, Any]) -> torch.Tensor:
    """R[i, j] averaged over seeds; NaN above the diagonal (tasks not yet trained)."""
    runs = saved["runs"]
    tasks = len(runs[0]["accuracy_rows"])
    matrix = torch.full((len(runs), tasks, tasks), float("nan"))
    for r, run in enumerate(runs):
        for i, row in enumerate(run["accuracy_rows"]):
            matrix[r, i, : len(row)] = torch.tensor(row)
    return matrix.mean(0)


def accuracy_as_tasks_arrive(matrix: torch.Tensor) -> list[float]:
    """Average accuracy over the tasks seen so far, after each task."""
    return [matrix[i, : i + 1].mean().item() for i in range(len(matrix))]
