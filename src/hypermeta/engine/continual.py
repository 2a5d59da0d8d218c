"""Continual learning (kind `continual`): a sequence of tasks learned one after another.

train     for each seed: learns tasks 0..T-1 in order; after task i measures the test
          accuracy on every task j <= i (row i of the accuracy matrix R, as the continual-
          learning literature does: the intermediate models are not kept). Checkpoints
          every `checkpoint_every` iterations and between tasks, so a killed run
          resumes exactly (same batches, embeddings, stored targets, Fisher, ...).
evaluate  from the final models: R's last row again, average final accuracy and
          backward transfer in the task-incremental scenario (CL1, task id given), and
          with the task inferred as the one of lowest predictive entropy (HNET+ENT):
          CL2 (domain-incremental: within-task label right) and CL3 (task and label
          right). 95% CIs over seeds when there are several, else over test examples.
report    the group's methods side by side in one table (`compare_columns`); the
          figures are plots/continual.py's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from hypermeta.atomic import torch_save, write_json
from hypermeta.config import StrictModel, validate_section
from hypermeta.continual.learner import ContinualLearner
from hypermeta.data.continual import SequenceKind, TaskSequence
from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.engine import register
from hypermeta.engine.base import Engine, StageContext
from hypermeta.engine.checkpoint import Checkpointer, load_saved
from hypermeta.engine.device import DeviceName, adam, resolve_device
from hypermeta.methods import get_method
from hypermeta.progress import progress
from hypermeta.stats import mean_interval, wilson_interval


class ContinualTrain(StrictModel):
    sequence: SequenceKind = "permuted"
    num_tasks: int = Field(10, gt=0)
    iterations_per_task: int = Field(2000, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)
    seeds: list[int] = Field([0], min_length=1, description="one full sequence per seed")
    checkpoint_every: int = Field(500, gt=0, description="iterations between checkpoints")
    device: DeviceName = "auto"


class ContinualEval(StrictModel):
    batch_size: int = Field(1000, gt=0)
    confidence: float = Field(0.95, gt=0, lt=1)


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


class SequenceInterrupted(Exception):
    """Raised by a `stop_at` hook to end training as a kill would (used to test resume)."""


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
    """Learn the task sequence once per seed; returns what model.pt stores.

    Every iteration's batch is drawn from a generator seeded by (seed, task, iteration),
    so a run resumed from any checkpoint draws exactly the batches it would have."""
    state = checkpointer.load()
    position = (0, 0, 0) if state is None else state["position"]
    runs: list[dict[str, Any]] = [] if state is None else state["runs"]
    history: list[dict[str, Any]] = [] if state is None else state["history"]
    if state is not None:
        print(
            f"[hypermeta] {name}: resuming at seed #{position[0]}, task {position[1]}, "
            f"iteration {position[2]}"
        )
        for row in history:
            log_row(row, row["step"])
    sampler = torch.Generator()

    def save(
        next_position: tuple[int, int, int],
        learner: ContinualLearner | None,
        optimizer: torch.optim.Optimizer | None,
        task_sums: dict[str, float] | None = None,
    ) -> None:
        checkpointer.save(
            {
                "position": next_position,
                "learner": None if learner is None else learner.state_dict(),
                "optimizer": None if optimizer is None else optimizer.state_dict(),
                "task_sums": task_sums,  # within a task: its row averages every iteration
                "runs": runs,
                "history": history,
            }
        )

    info = sequence_info(
        manifest,
        TaskSequence(cfg.sequence, splits["train"], manifest, cfg.num_tasks, cfg.seeds[0]),
    )
    for seed_index in range(position[0], len(cfg.seeds)):
        seed = cfg.seeds[seed_index]
        train_data = TaskSequence(
            cfg.sequence, splits["train"], manifest, cfg.num_tasks, seed, device
        )
        test_data = TaskSequence(
            cfg.sequence, splits["test"], manifest, cfg.num_tasks, seed, device
        )
        torch.manual_seed(seed)
        learner = build_learner(section, info).to(device)
        resuming = state is not None and seed_index == position[0]
        if resuming and state["learner"] is not None:
            learner.load_state_dict(state["learner"])
        else:
            runs.append({"seed": seed, "accuracy_rows": [], "diagonal_correct": []})
        run = runs[-1]
        first_task = position[1] if resuming else 0
        for task in range(first_task, cfg.num_tasks):
            optimizer = adam(learner.parameters(), cfg.lr)
            first_iteration = position[2] if resuming and task == position[1] else 0
            sums = {"loss": 0.0, "seconds": 0.0}
            if first_iteration:
                optimizer.load_state_dict(state["optimizer"])
                sums = dict(state["task_sums"])
            else:
                learner.begin_task(task)
            tasks = learner.training_tasks(task)
            per_task_batch = max(1, cfg.batch_size // len(tasks))
            began = time.perf_counter()

            steps = range(first_iteration, cfg.iterations_per_task)
            for iteration in progress(steps, desc=f"{name} seed {seed} task {task + 1}"):
                batches = []
                for t in tasks:
                    sampler.manual_seed(((seed * 1009 + task) * 1_000_003 + iteration) * 101 + t)
                    positions = torch.randint(
                        train_data.size(t), (per_task_batch,), generator=sampler
                    )
                    x, y = train_data.batch(t, positions.to(device))
                    batches.append((x, y, t))
                loss = learner.training_loss(batches, task, optimizer)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                learner.after_step()
                sums["loss"] += loss.item()
                done = iteration + 1
                if done < cfg.iterations_per_task and done % cfg.checkpoint_every == 0:
                    sums_now = {**sums, "seconds": sums["seconds"] + time.perf_counter() - began}
                    save((seed_index, task, done), learner, optimizer, sums_now)
                    if stop_at(seed_index, task, done):
                        raise SequenceInterrupted
            learner.end_task(task, train_data)
            seconds = sums["seconds"] + time.perf_counter() - began
            # Tasks not yet trained are left out: their accuracy is chance and unused.
            correct = [task_correctness(learner, test_data, j, 1000) for j in range(task + 1)]
            row_accuracy = [c.float().mean().item() for c in correct]
            run["accuracy_rows"].append(row_accuracy)
            run["diagonal_correct"].append(correct[task])
            row = {
                "step": seed_index * cfg.num_tasks + task + 1,
                "seed": seed,
                "task": task + 1,
                "train_loss": sums["loss"] / cfg.iterations_per_task,
                "average_accuracy_so_far": sum(row_accuracy) / (task + 1),
                "task_seconds": seconds,
            }
            history.append(row)
            log_row(row, row["step"])
            print(
                f"[hypermeta] {name} seed {seed} task {task + 1}/{cfg.num_tasks}: "
                f"average accuracy so far {row['average_accuracy_so_far']:.4f}"
            )
            finished_seed = task + 1 == cfg.num_tasks
            if finished_seed:
                run["final_state"] = {k: v.cpu() for k, v in learner.state_dict().items()}
            # After a seed's last task the next seed starts from a fresh learner.
            next_position = (seed_index + 1, 0, 0) if finished_seed else (seed_index, task + 1, 0)
            save(next_position, None if finished_seed else learner, None)
            if stop_at(*next_position):
                raise SequenceInterrupted
        state = None
    return {"experiment": section, "data_info": info, "runs": runs, "history": history}


def load_trained(model_path: Path) -> dict[str, Any]:
    return load_saved(model_path)


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


class ContinualEngine(Engine):
    kind = "continual"
    train_config = ContinualTrain
    eval_config = ContinualEval
    compare_columns = {
        "CL1 average final accuracy": "cl1_average_accuracy",
        "CL1 backward transfer": "cl1_backward_transfer",
        "CL2 average accuracy": "cl2_average_accuracy",
        "CL3 average accuracy": "cl3_average_accuracy",
        "compression ratio": "compression_ratio",
        "seconds per task": "seconds_per_task",
    }
    compare_note = (
        "CL1: task identity given. CL2 and CL3 infer the task as the one whose prediction "
        "has the lowest entropy: HNET among its task embeddings (HNET+ENT), the baselines "
        "among their task heads. CL2 counts the label right, CL3 the task and the label."
    )

    def train(self, ctx: StageContext) -> None:
        exp = ctx.experiment
        cfg: ContinualTrain = exp.train
        device = resolve_device(cfg.device, f"experiments.{exp.name}.train.device")
        splits = {s: load_split(ctx.data_dir, s) for s in ("train", "test")}
        saved = train_sequences(
            exp.section,
            cfg,
            splits,
            load_manifest(ctx.data_dir),
            Checkpointer(ctx.checkpoint_path, exp.params_hash),
            device,
            log_row=lambda row, step: ctx.tracker.log_metrics(row, step=step),
            name=exp.name,
        )
        torch_save(ctx.model_path, saved)
        write_json(ctx.history_path, saved["history"])

    def trained_model(self, ctx: StageContext) -> tuple[torch.nn.Module, str]:
        saved = load_trained(ctx.model_path)
        first = saved["runs"][0]
        learner = build_learner(saved["experiment"], saved["data_info"])
        learner.load_state_dict(first["final_state"])
        info = saved["data_info"]
        return learner.eval(), (
            f"learner(x, task) → logits over task's classes, as trained with seed "
            f"{first['seed']} (the first of {len(saved['runs'])}); x (N, pixels) flattened, "
            f"(pixel / 255 - {info['mean']:.4f}) / {info['std']:.4f}, permuted as the task's "
            "(hypermeta.data.continual.TaskSequence)"
        )

    def evaluate(self, ctx: StageContext) -> dict[str, Any]:
        exp = ctx.experiment
        cfg: ContinualEval = exp.eval
        train_cfg: ContinualTrain = exp.train
        device = resolve_device(train_cfg.device, f"experiments.{exp.name}.train.device")
        saved = load_trained(ctx.model_path)
        test = load_split(ctx.data_dir, "test")
        num_tasks = train_cfg.num_tasks
        per_seed: dict[str, list[float]] = {"cl1": [], "bwt": [], "cl2": [], "cl3": []}
        pooled: dict[str, list[torch.Tensor]] = {"cl1": [], "cl2": [], "cl3": [], "bwt": []}
        for run in saved["runs"]:
            learner = build_learner(saved["experiment"], saved["data_info"]).to(device)
            learner.load_state_dict(run["final_state"])
            data = TaskSequence(
                train_cfg.sequence, test, saved["data_info"], num_tasks, run["seed"], device
            )
            final = [task_correctness(learner, data, j, cfg.batch_size) for j in range(num_tasks)]
            inferred = [
                inferred_task_correctness(learner, data, j, cfg.batch_size)
                for j in range(num_tasks)
            ]
            # Paired per example: right at the end minus right just after its own task.
            drops = [
                final[j].float() - run["diagonal_correct"][j].float() for j in range(num_tasks - 1)
            ]
            per_seed["cl1"].append(torch.stack([c.float().mean() for c in final]).mean().item())
            per_seed["bwt"].append(
                torch.stack([d.mean() for d in drops]).mean().item() if drops else 0.0
            )
            per_seed["cl2"].append(
                torch.stack([c.float().mean() for c, _ in inferred]).mean().item()
            )
            per_seed["cl3"].append(
                torch.stack([b.float().mean() for _, b in inferred]).mean().item()
            )
            pooled["cl1"] += final
            pooled["cl2"] += [c for c, _ in inferred]
            pooled["cl3"] += [b for _, b in inferred]
            pooled["bwt"] += drops

        over_seeds = len(saved["runs"]) > 1
        metrics: dict[str, Any] = {}
        names = {
            "cl1": "cl1_average_accuracy",
            "bwt": "cl1_backward_transfer",
            "cl2": "cl2_average_accuracy",
            "cl3": "cl3_average_accuracy",
        }
        for key, metric in names.items():
            value = sum(per_seed[key]) / len(per_seed[key])
            if over_seeds:
                _, half = mean_interval(torch.tensor(per_seed[key]), cfg.confidence)
                low, high = value - half, value + half
            elif key == "bwt":
                if pooled["bwt"]:
                    _, half = mean_interval(torch.cat(pooled["bwt"]), cfg.confidence)
                else:
                    half = 0.0
                low, high = value - half, value + half
            else:
                hits = torch.cat(pooled[key])
                low, high = wilson_interval(int(hits.sum()), len(hits), cfg.confidence)
            metrics |= {metric: value, f"{metric}_ci_low": low, f"{metric}_ci_high": high}

        matrix = mean_matrix(saved)
        for i, value in enumerate(accuracy_as_tasks_arrive(matrix)):
            metrics[f"cl1_average_accuracy_after_task_{i + 1}"] = value
        learner = build_learner(saved["experiment"], saved["data_info"])
        trainable = sum(p.numel() for p in learner.parameters())
        main = learner.main_network_size()
        history = saved["history"]
        metrics |= {
            "params_trainable": trainable,
            "params_main_network": main,
            "compression_ratio": trainable / main,
            "seconds_per_task": sum(r["task_seconds"] for r in history) / len(history),
            "seeds": len(saved["runs"]),
            "ci_over_seeds": int(over_seeds),
            "confidence": cfg.confidence,
        }
        return metrics


register(ContinualEngine())
