"""The one training loop of every engine kind; each kind supplies a `Training`: its
state, its step, its validation row and what its lines and progress bars show.

Training runs `rounds` rounds of `steps` steps: the epochs of classification and
language models, the one round of meta-iterations of few-shot learning and regression,
the tasks of each seed's sequence in continual learning (round = seed index × tasks +
task). After a round's last step comes a history row and a checkpoint; `row_every` and
`checkpoint_every` add rows and checkpoints inside a round. A position (round, step)
says where training continues: a checkpoint holds the training's state at its position
and the history, so a run resumed from it repeats the uninterrupted one exactly (each
kind draws its batches from generators seeded by position, or checkpoints them).
`EarlyStopping` ends training when the rows stop improving or a value diverges.

A new engine kind subclasses `Training` (its state, `step` and `row`, and a few lines
of wording), and its `Engine.train` is `fit_stage` then `save_trained`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from hypermeta.atomic import torch_save, write_json
from hypermeta.engine.base import StageContext
from hypermeta.engine.checkpoint import Checkpointer
from hypermeta.errors import HypermetaError
from hypermeta.progress import progress

Row = dict[str, Any]


@dataclass
class EarlyStopping:
    """Stop before a round once `patience` rows in a row have not lowered `key`; a
    non-finite `key` (diverged training) stops at once, keeping the best earlier model,
    and fails naming `diverged_fix` when there is none."""

    key: str
    patience: int
    diverged_fix: str
    best: float = math.inf
    stale: int = 0

    def improved(self, value: float) -> bool:
        """Counts a row's `value`: whether it is the best so far."""
        if value < self.best:
            self.best, self.stale = value, 0
            return True
        self.stale += 1
        return False


class Training(ABC):
    """What one engine kind does in the loop, and the state it carries."""

    label: str  # names the run in its lines and progress bars
    rounds: int
    steps: int  # per round
    step_key: ClassVar[str]  # the history key that is a row's MLflow step
    row_every: int | None = None  # a row every this many steps inside a round too
    checkpoint_every: int | None = None  # a checkpoint every this many steps inside a round too
    early_stopping: EarlyStopping | None = None

    @abstractmethod
    def state(self, round: int, step: int) -> dict[str, Any]:
        """What the checkpoint at position (round, step) holds besides the history."""

    @abstractmethod
    def restore(self, state: dict[str, Any]) -> tuple[int, int]:
        """Take up a checkpoint's `state`; returns its position."""

    @abstractmethod
    def resumed(self, round: int, step: int) -> str:
        """Where a resumed run continues, for its first line: 'after epoch 3 of 10'."""

    @abstractmethod
    def begin_round(self, round: int, step: int) -> str:
        """Make ready to run `round` from `step`; returns its progress bar's title."""

    @abstractmethod
    def step(self, round: int, step: int) -> None: ...

    @abstractmethod
    def row(self, round: int, done: int) -> Row:
        """The history row after `done` steps of `round`: validation and the training
        numbers since the last row."""

    def line(self, row: Row) -> str | None:
        """What to print of `row` after the label, if anything."""
        return None

    def postfix(self, last: Row | None) -> dict[str, str]:
        """The progress bar's numbers after a step; `last` is the latest row."""
        return {}

    def validated(self, improved: bool) -> None:
        """With early stopping: after each row, whether it lowered the watched value."""
        return None


def fit(
    training: Training,
    checkpointer: Checkpointer,
    log_metrics: Callable[[Row, int], None] = lambda row, step: None,
    checkpointed: Callable[[dict[str, Any]], None] = lambda state: None,
) -> list[Row]:
    """Run `training` to its end (or its early stop) from where `checkpointer` left it;
    returns the history. `checkpointed` sees every checkpoint once it is written."""
    history: list[Row] = []
    stopping = training.early_stopping
    start = (0, 0)
    if state := checkpointer.load():
        start = training.restore(state)
        history = state["history"]
        if stopping:
            stopping.best, stopping.stale = state["best_val"], state["stale"]
        print(f"[hypermeta] {training.label}: resuming {training.resumed(*start)}")
        for row in history:  # the new MLflow run shows the whole curve
            log_metrics(row, row[training.step_key])

    def save(round: int, step: int) -> None:
        state = {**training.state(round, step), "history": history}
        if stopping:
            state |= {"best_val": stopping.best, "stale": stopping.stale}
        checkpointer.save(state)
        checkpointed(state)

    def record(round: int, done: int) -> bool:
        """Adds the row due after `done` steps; False when training must stop."""
        row = training.row(round, done)
        if stopping and not math.isfinite(row[stopping.key]):
            diverged(training, stopping, row)
            return False
        history.append(row)
        log_metrics(row, row[training.step_key])
        if line := training.line(row):
            print(f"[hypermeta] {training.label} {line}")
        if stopping:
            training.validated(stopping.improved(row[stopping.key]))
        return True

    for round in range(start[0], training.rounds):
        if stopping and stopping.stale >= stopping.patience:  # also when a stopped run reruns
            stale = "validation" if stopping.stale == 1 else f"{stopping.stale} validations"
            print(
                f"[hypermeta] {training.label}: {stopping.key} did not improve at the last "
                f"{stale}; stopping early."
            )
            break
        first = start[1] if round == start[0] else 0
        title = training.begin_round(round, first)
        bar = progress(range(first, training.steps), desc=f"{training.label} {title}")
        for step in bar:
            training.step(round, step)
            done = step + 1
            if done < training.steps:
                if every(training.row_every, done) and not record(round, done):
                    return history
                if every(training.checkpoint_every, done):
                    save(round, done)
            if postfix := training.postfix(history[-1] if history else None):
                bar.set_postfix(postfix, refresh=False)  # shown at the bar's next refresh
        if not record(round, training.steps):
            break
        save(round + 1, 0)
    return history


def every(period: int | None, done: int) -> bool:
    return period is not None and done % period == 0


def diverged(training: Training, stopping: EarlyStopping, row: Row) -> None:
    value, where = row[stopping.key], f"{training.step_key} {row[training.step_key]}"
    if stopping.best == math.inf:
        raise HypermetaError(
            f"{training.label}: {stopping.key} is {value} after {where}, so training diverged "
            f"before any {training.step_key} worth keeping; {stopping.diverged_fix}."
        )
    print(
        f"[hypermeta] {training.label}: {stopping.key} is {value} after {where} (training "
        f"diverged); stopping with the best model ({stopping.key} {stopping.best:.4f})."
    )


def fit_stage(training: Training, ctx: StageContext) -> list[Row]:
    """`fit` in a train stage: its experiment's checkpoint, rows logged to its run."""
    checkpointer = Checkpointer(ctx.checkpoint_path, ctx.training_hash())
    return fit(training, checkpointer, ctx.tracker.log_metrics)


def save_trained(
    model_path: Path, saved: dict[str, Any], history: list[Row], history_path: Path | None = None
) -> None:
    """The trained model's file, `saved` (its experiment, data_info and weights) with the
    history, and the history alone as JSON at `history_path`; each written atomically."""
    torch_save(model_path, {**saved, "history": history})
    if history_path is not None:
        write_json(history_path, history)


def on_cpu(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: tensor.cpu() for name, tensor in weights.items()}
