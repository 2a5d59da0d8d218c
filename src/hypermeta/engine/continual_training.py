"""Learning a sequence of tasks one after another, once per seed, on the one loop:
round r is task r mod T of seed number r div T, so a checkpoint's position (seed index,
task, iteration) is the loop's (round, step). Between tasks the optimizer starts anew;
between seeds the learner does. After each task a row: the test accuracy on every task
learned so far (row i of the accuracy matrix R)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field

from hypermeta.config import StrictModel, validate_section
from hypermeta.continual.learner import ContinualLearner
from hypermeta.data.continual import SequenceKind, TaskSequence
from hypermeta.engine.checkpoint import Checkpointer
from hypermeta.engine.continual_accuracy import task_correctness
from hypermeta.engine.device import DeviceName, adam
from hypermeta.engine.loop import Row, Training, fit, on_cpu
from hypermeta.methods import get_method


class ContinualTrain(StrictModel):
    sequence: SequenceKind = "permuted"
    num_tasks: int = Field(10, gt=0)
    iterations_per_task: int = Field(2000, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)
    seeds: list[int] = Field([0], min_length=1, description="one full sequence per seed")
    checkpoint_every: int = Field(500, gt=0, description="iterations between checkpoints")
    device: DeviceName = "auto"


def sequence_info(manifest: dict[str, Any], sequence: TaskSequence) -> dict[str, Any]:
    """What a method's builder needs: the manifest plus the shape of the task sequence."""
    return {
        **manifest,
        "num_tasks": sequence.num_tasks,
        "classes_per_task": sequence.classes_per_task,
        "input_size": sequence.input_size,
    }


def build_learner(section: dict[str, Any], data_info: dict[str, Any]) -> ContinualLearner:
    method = get_method(section["method"])
    config = validate_section(method.model_config, section.get("model", {}), "model")
    return method.build(config, data_info)


class SequenceInterrupted(Exception):
    """Raised by a `stop_at` hook to end training as a kill would (used to test resume)."""


class SequenceTraining(Training):
    """Every seed's task sequence; each iteration's batch is drawn from a generator seeded
    by (seed, task, iteration), so a run resumed from any checkpoint draws exactly the
    batches it would have."""

    step_key = "step"

    def __init__(
        self,
        section: dict[str, Any],
        cfg: ContinualTrain,
        splits: dict[str, dict[str, torch.Tensor]],
        manifest: dict[str, Any],
        device: torch.device,
        label: str,
    ) -> None:
        self.section, self.cfg, self.splits, self.manifest = section, cfg, splits, manifest
        self.device, self.label = device, label
        self.info = sequence_info(
            manifest,
            TaskSequence(cfg.sequence, splits["train"], manifest, cfg.num_tasks, cfg.seeds[0]),
        )
        self.rounds = len(cfg.seeds) * cfg.num_tasks
        self.steps, self.checkpoint_every = cfg.iterations_per_task, cfg.checkpoint_every
        self.runs: list[dict[str, Any]] = []
        self.learner: ContinualLearner | None = None
        self.checkpoint: dict[str, Any] | None = None  # resumed from, until its task is set up
        self.sampler = torch.Generator()

    def position(self, round: int, step: int) -> tuple[int, int, int]:
        """(seed index, task, iteration)."""
        return (*divmod(round, self.cfg.num_tasks), step)

    def state(self, round: int, step: int) -> dict[str, Any]:
        position = self.position(round, step)
        state = {
            "position": position,
            "learner": self.learner.state_dict(),
            "optimizer": None,
            "task_sums": None,
            "runs": self.runs,
        }
        if step:  # within a task: its optimizer, and sums for a row of every iteration
            seconds = self.sums["seconds"] + time.perf_counter() - self.began
            state["optimizer"] = self.optimizer.state_dict()
            state["task_sums"] = {**self.sums, "seconds": seconds}
        elif position[1] == 0:  # a seed is done: the next one starts from a fresh learner
            state["learner"] = None
        return state

    def restore(self, state: dict[str, Any]) -> tuple[int, int]:
        self.checkpoint, self.runs = state, state["runs"]
        seed_index, task, iteration = state["position"]
        return seed_index * self.cfg.num_tasks + task, iteration

    def resumed(self, round: int, step: int) -> str:
        seed_index, task, iteration = self.position(round, step)
        return f"at seed #{seed_index}, task {task}, iteration {iteration}"

    def begin_round(self, round: int, step: int) -> str:
        cfg, device = self.cfg, self.device
        seed_index, task = divmod(round, cfg.num_tasks)
        checkpoint, self.checkpoint = self.checkpoint, None
        if task == 0 or self.learner is None:  # a new seed, or the run resumed in one
            self.seed = seed = cfg.seeds[seed_index]
            self.train_data, self.test_data = (
                TaskSequence(cfg.sequence, split, self.manifest, cfg.num_tasks, seed, device)
                for split in (self.splits["train"], self.splits["test"])
            )
            torch.manual_seed(seed)
            self.learner = build_learner(self.section, self.info).to(device)
            if checkpoint is not None and checkpoint["learner"] is not None:
                self.learner.load_state_dict(checkpoint["learner"])
            else:
                self.runs.append({"seed": seed, "accuracy_rows": [], "diagonal_correct": []})
        self.optimizer = adam(self.learner.parameters(), cfg.lr)
        self.sums = {"loss": 0.0, "seconds": 0.0}
        if step:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.sums = dict(checkpoint["task_sums"])
        else:
            self.learner.begin_task(task)
        self.task, self.tasks = task, self.learner.training_tasks(task)
        self.per_task_batch = max(1, cfg.batch_size // len(self.tasks))
        self.began = time.perf_counter()
        return f"seed {self.seed} task {task + 1}"

    def step(self, round: int, step: int) -> None:
        batches = []
        for t in self.tasks:
            self.sampler.manual_seed(((self.seed * 1009 + self.task) * 1_000_003 + step) * 101 + t)
            positions = torch.randint(
                self.train_data.size(t), (self.per_task_batch,), generator=self.sampler
            )
            x, y = self.train_data.batch(t, positions.to(self.device))
            batches.append((x, y, t))
        loss = self.learner.training_loss(batches, self.task, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.learner.after_step()
        self.sums["loss"] += loss.item()

    def row(self, round: int, done: int) -> Row:
        learner, task, run = self.learner, self.task, self.runs[-1]
        learner.end_task(task, self.train_data)
        seconds = self.sums["seconds"] + time.perf_counter() - self.began
        # Tasks not yet trained are left out: their accuracy is chance and unused.
        correct = [task_correctness(learner, self.test_data, j, 1000) for j in range(task + 1)]
        row_accuracy = [c.float().mean().item() for c in correct]
        run["accuracy_rows"].append(row_accuracy)
        run["diagonal_correct"].append(correct[task])
        if task + 1 == self.cfg.num_tasks:
            run["final_state"] = on_cpu(learner.state_dict())
        return {
            "step": round + 1,
            "seed": self.seed,
            "task": task + 1,
            "train_loss": self.sums["loss"] / self.cfg.iterations_per_task,
            "average_accuracy_so_far": sum(row_accuracy) / (task + 1),
            "task_seconds": seconds,
        }

    def line(self, row: Row) -> str:
        return (
            f"seed {row['seed']} task {row['task']}/{self.cfg.num_tasks}: "
            f"average accuracy so far {row['average_accuracy_so_far']:.4f}"
        )

    def saved(self) -> dict[str, Any]:
        return {"experiment": self.section, "data_info": self.info, "runs": self.runs}


def train_sequences(
    section: dict[str, Any],
    cfg: ContinualTrain,
    splits: dict[str, dict[str, torch.Tensor]],
    manifest: dict[str, Any],
    checkpointer: Checkpointer,
    device: torch.device,
    log_row: Callable[[dict[str, Any], int], None] = lambda row, step: None,
    stop_at: Callable[[int, int, int], bool] = lambda seed_index, task, iteration: False,
    name: str = "continual",
) -> dict[str, Any]:
    """Learn the task sequence once per seed; returns what model.pt stores. `stop_at`
    (seed index, task, iteration) is asked after each checkpoint."""
    training = SequenceTraining(section, cfg, splits, manifest, device, name)

    def stop(state: dict[str, Any]) -> None:
        if stop_at(*state["position"]):
            raise SequenceInterrupted

    history = fit(training, checkpointer, log_row, stop)
    return {**training.saved(), "history": history}
