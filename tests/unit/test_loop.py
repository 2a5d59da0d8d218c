"""The one training loop (engine/loop.py) on a toy training: the cadence of rows and
checkpoints, exact resume from every checkpoint, early stopping and divergence."""

from __future__ import annotations

import math

import pytest
import torch

from hypermeta.engine.checkpoint import Checkpointer
from hypermeta.engine.loop import EarlyStopping, Training, fit
from hypermeta.errors import HypermetaError


class Counting(Training):
    """Sums one seeded draw per step; a row says the sum and the window since the last
    row, and `val` is the next of `values` (for early stopping) or minus the sum."""

    step_key = "n"

    def __init__(self, values: list[float] | None = None, patience: int | None = None) -> None:
        self.label, self.rounds, self.steps = "toy", 3, 5
        self.row_every, self.checkpoint_every = 2, 3
        self.values = values
        if patience is not None:
            self.early_stopping = EarlyStopping("val", patience, diverged_fix="lower the lr")
        self.total, self.window, self.rows = 0.0, 0.0, 0
        self.validations: list[bool] = []

    def state(self, round: int, step: int) -> dict:
        return {"at": (round, step), "total": self.total, "window": self.window, "rows": self.rows}

    def restore(self, state: dict) -> tuple[int, int]:
        self.total, self.window, self.rows = state["total"], state["window"], state["rows"]
        return state["at"]

    def resumed(self, round: int, step: int) -> str:
        return f"at round {round}, step {step}"

    def begin_round(self, round: int, step: int) -> str:
        return f"round {round}"

    def step(self, round: int, step: int) -> None:
        generator = torch.Generator().manual_seed(round * 100 + step)  # seeded by position
        draw = torch.rand(1, generator=generator, dtype=torch.float64).item()
        self.total += draw
        self.window += draw

    def row(self, round: int, done: int) -> dict:
        val = self.values[self.rows] if self.values else -self.total
        row = {"n": round * self.steps + done, "total": self.total, "window": self.window}
        self.window, self.rows = 0.0, self.rows + 1
        return {**row, "val": val}

    def validated(self, improved: bool) -> None:
        self.validations.append(improved)


class Killed(Exception):
    pass


def run(tmp_path, training: Training, kill_after: int | None = None):
    """`fit` with its checkpoints at tmp_path; returns (history, logged steps, saved positions)."""
    logged, saved = [], []

    def checkpointed(state: dict) -> None:
        saved.append(state["at"])
        if len(saved) == kill_after:
            raise Killed

    checkpointer = Checkpointer(tmp_path / "checkpoint.pt", "toy")
    history = fit(training, checkpointer, lambda row, step: logged.append(step), checkpointed)
    return history, logged, saved


def test_rows_and_checkpoints_keep_their_cadence_and_close_every_round(tmp_path):
    history, logged, saved = run(tmp_path, Counting())
    # rows every 2 steps and after each round's 5th; checkpoints every 3 and after each round
    assert [row["n"] for row in history] == [2, 4, 5, 7, 9, 10, 12, 14, 15]
    assert logged == [2, 4, 5, 7, 9, 10, 12, 14, 15]
    assert saved == [(0, 3), (1, 0), (1, 3), (2, 0), (2, 3), (3, 0)]


@pytest.mark.parametrize("kill_after", range(1, 6))
def test_a_run_killed_after_any_checkpoint_resumes_exactly(tmp_path, capsys, kill_after):
    straight = Counting()
    history, logged, _ = run(tmp_path / "straight", straight)
    with pytest.raises(Killed):
        run(tmp_path / "killed", Counting(), kill_after)
    resumed = Counting()
    resumed_history, resumed_logged, _ = run(tmp_path / "killed", resumed)
    assert "[hypermeta] toy: resuming at round" in capsys.readouterr().out
    assert resumed.total == straight.total  # the same draws, summed in the same order
    assert resumed_history == history  # a row after the resume has its whole window
    assert resumed_logged == logged  # the rows before the kill are logged again


def test_early_stopping_before_a_round_after_patience_rows_without_gain_also_when_rerun(
    tmp_path, capsys
):
    values = [3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 1.0]  # three rows a round
    training = Counting(values, patience=2)
    history, _, saved = run(tmp_path, training)
    assert [row["val"] for row in history] == values[:6]  # rounds 0 and 1, not 2
    assert training.validations == [True, True, False, False, False, False]
    assert saved[-1] == (2, 0)
    assert "toy: val did not improve at the last 4 validations; stopping early" in (
        capsys.readouterr().out
    )
    rerun = Counting(values, patience=2)
    assert run(tmp_path, rerun)[0] == history and rerun.validations == []
    assert "stopping early" in capsys.readouterr().out


def test_a_diverged_value_stops_with_the_best_row_or_names_the_fix(tmp_path, capsys):
    history, _, _ = run(tmp_path / "late", Counting(values=[3.0, math.nan], patience=5))
    assert [row["val"] for row in history] == [3.0]
    out = capsys.readouterr().out
    assert "val is nan after n 4 (training diverged); stopping with the best model" in out
    assert "(val 3.0000)" in out
    with pytest.raises(HypermetaError, match="diverged before any n worth keeping; lower the lr"):
        run(tmp_path / "early", Counting(values=[math.nan], patience=5))
