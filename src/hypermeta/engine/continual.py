"""Continual learning (kind `continual`): a sequence of tasks learned one after another.

train     for each seed: learns tasks 0..T-1 in order; after task i measures the test
          accuracy on every task j <= i (row i of the accuracy matrix R, as the continual-
          learning literature does: the intermediate models are not kept). Checkpoints
          every `checkpoint_every` iterations and between tasks, so a killed run
          resumes exactly (same batches, embeddings, stored targets, Fisher, ...):
          continual_training.py.
evaluate  from the final models: R's last row again, average final accuracy and
          backward transfer in the task-incremental scenario (CL1, task id given), and
          with the task inferred as the one of lowest predictive entropy (HNET+ENT):
          CL2 (domain-incremental: within-task label right) and CL3 (task and label
          right). 95% CIs over seeds when there are several, else over test examples.
report    the group's methods side by side in one table (`compare_columns`); the
          figures are plots/continual.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from hypermeta.config import StrictModel
from hypermeta.data.continual import TaskSequence
from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.engine import register
from hypermeta.engine.base import Engine, StageContext
from hypermeta.engine.checkpoint import load_saved
from hypermeta.engine.continual_accuracy import (
    accuracy_as_tasks_arrive,
    inferred_task_correctness,
    mean_matrix,
    task_correctness,
)
from hypermeta.engine.continual_training import ContinualTrain, SequenceTraining, build_learner
from hypermeta.engine.device import resolve_device
from hypermeta.engine.loop import fit_stage, save_trained
from hypermeta.stats import mean_interval, wilson_interval


class ContinualEval(StrictModel):
    batch_size: int = Field(1000, gt=0)
    confidence: float = Field(0.95, gt=0, lt=1)


def load_trained(model_path: Path) -> dict[str, Any]:
    return load_saved(model_path)


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
        manifest = load_manifest(ctx.data_dir)
        training = SequenceTraining(exp.section, cfg, splits, manifest, device, exp.name)
        history = fit_stage(training, ctx)
        save_trained(ctx.model_path, training.saved(), history, ctx.history_path)

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
