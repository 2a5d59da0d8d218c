"""The outer learning rate over a run of meta-iterations (few-shot and regression)."""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

LrSchedule = Literal["constant", "step", "cosine"]


def lr_factor(
    schedule: LrSchedule, iteration: int, total: int, decay: float = 1.0, every: int = 1
) -> float:
    """The lr's factor at `iteration` of `total`: 1; `decay` per `every` iterations
    (step); or annealed to 0 along a half cosine (MAML++'s CA)."""
    if schedule == "step":
        return decay ** (iteration // every)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * iteration / total))
    return 1.0


def lr_scheduler(
    optimizer: Optimizer, schedule: LrSchedule, total: int, decay: float = 1.0, every: int = 1
) -> LambdaLR:
    return LambdaLR(optimizer, lambda i: lr_factor(schedule, i, total, decay, every))
