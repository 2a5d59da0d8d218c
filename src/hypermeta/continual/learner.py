"""What every continual learner offers the engine, and the multi-head main network the
regularisation baselines (fine-tuning, EWC, SI, multi-task) share.

A learner maps (inputs, task id) to logits over that task's classes. The engine calls
`begin_task`, then `training_loss` + an optimizer step + `after_step` per iteration,
then `end_task`. Everything a method remembers between tasks (stored hypernetwork
targets, Fisher diagonals, SI importances) is a registered buffer, so `state_dict()`
carries it and a checkpoint resumes the sequence exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hypermeta.data.continual import TaskSequence
from hypermeta.nn.mainnet import mlp

Batch = tuple[torch.Tensor, torch.Tensor, int]  # inputs, task-local labels, task id


class ContinualLearner(nn.Module):
    def __init__(self, num_tasks: int, classes_per_task: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.classes_per_task = classes_per_task

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        raise NotImplementedError

    def all_task_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(num_tasks, N, classes_per_task): the prediction under every task identity,
        used when the task is not given and must be inferred."""
        return torch.stack([self(x, task) for task in range(self.num_tasks)])

    def training_tasks(self, task: int) -> list[int]:
        """Tasks whose data a training step of `task` sees (only `task` in continual learning)."""
        return [task]

    def training_loss(
        self, batches: list[Batch], task: int, optimizer: torch.optim.Optimizer
    ) -> torch.Tensor:
        """The loss to step on; `optimizer` (about to step) is there for methods that look
        ahead at its update (HNET's ΔΘ)."""
        loss = torch.stack([F.cross_entropy(self(x, t), y) for x, y, t in batches]).mean()
        return loss + self.penalty()

    def penalty(self) -> torch.Tensor:
        """The method's regulariser on top of the task loss (none for fine-tuning)."""
        return torch.zeros((), device=next(self.parameters()).device)

    def begin_task(self, task: int) -> None:
        """Called once before the first step of `task`."""

    def after_step(self) -> None:
        """Called after every optimizer step (SI accumulates its path integral here)."""

    def end_task(self, task: int, data: TaskSequence) -> None:
        """Called once after the last step of `task`, with the training sequence."""

    def main_network_size(self) -> int:
        """Weights of the network that classifies (what the compression ratio divides by)."""
        return sum(p.numel() for p in self.parameters())


class MultiHeadLearner(ContinualLearner):
    """An MLP trained directly, with one output head of `classes_per_task` per task
    (the task-incremental setting of van de Ven & Tolias 2019); plain fine-tuning."""

    def __init__(
        self, input_size: int, hidden: Sequence[int], num_tasks: int, classes_per_task: int
    ) -> None:
        super().__init__(num_tasks, classes_per_task)
        self.net = mlp(input_size, hidden, num_tasks * classes_per_task)

    def all_task_logits(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.net(x).view(len(x), self.num_tasks, self.classes_per_task)
        return heads.transpose(0, 1)

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        c = self.classes_per_task
        return self.net(x)[:, task * c : (task + 1) * c]

    def flat_parameters(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.parameters()])

    def flat_gradients(self) -> torch.Tensor:
        return torch.cat(
            [
                (torch.zeros_like(p) if p.grad is None else p.grad).flatten()
                for p in self.parameters()
            ]
        )

    def distance_to(self, anchor: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
        """Σ importance · (θ − anchor)², with gradient to θ only."""
        theta = torch.cat([p.flatten() for p in self.parameters()])
        return (importance * (theta - anchor).pow(2)).sum()
