"""Few-shot regression on MAML's sine tasks (Finn et al. 2017, §5.1), engine kind
`regression`: meta-train a 40-40 ReLU MLP with any MAML-family learner
(`<method>_regression`), evaluate MSE after K = 5 and 10 shots with 95% CIs over a
fixed seeded set of tasks (MAML's Figure 2, the learner vs. a network pretrained on all
tasks and then fine-tuned, is drawn by plots/regression.py).

The pretrained baseline is trained in the same stage, on the same task stream: plain
regression on every point of each meta-batch. It is fine-tuned with the same functional
inner loop (plain SGD at the learner's inner lr, `eval.finetune_lr` to change it).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from hypermeta.config import StrictModel
from hypermeta.data.episodes import Episodes
from hypermeta.data.prepare import load_manifest
from hypermeta.data.sine import (
    evaluation_tasks,
    sample_episodes,
    sample_tasks,
    with_shots,
)
from hypermeta.engine import register
from hypermeta.engine.base import Engine, StageContext
from hypermeta.engine.classification import build_model, load_trained
from hypermeta.engine.device import DeviceName, adam, resolve_device
from hypermeta.engine.loop import Row, Training, fit_stage, on_cpu, save_trained
from hypermeta.engine.schedule import lr_scheduler
from hypermeta.errors import HypermetaError
from hypermeta.methods.gradient.learner import GradientMetaLearner
from hypermeta.methods.maml import MAML
from hypermeta.nn import MLP
from hypermeta.stats import mean_interval


class RegressionTrain(StrictModel):
    meta_iterations: int = Field(70000, gt=0, description="outer steps (MAML: 70k)")
    meta_batch: int = Field(25, gt=0, description="tasks per outer step")
    k_shot: int = Field(10, gt=0, description="support points per training task")
    n_query: int = Field(10, gt=0, description="query points per training task")
    outer_lr: float = Field(0.001, gt=0, description="Adam lr of the outer loop and baseline")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="outer lr over training (cosine: MAML++'s annealing, to 0)"
    )
    log_every: int = Field(500, gt=0, description="iterations per history row (val MSE)")
    checkpoint_every: int = Field(1000, gt=0, description="iterations between checkpoints")
    val_tasks: int = Field(100, gt=0, description="fixed seeded tasks for the val curve")
    seed: int = 0
    device: DeviceName = "auto"


class RegressionEval(StrictModel):
    shots: list[int] = Field([5, 10], description="K values evaluated (support points)")
    n_tasks: int = Field(600, gt=1, description="fixed seeded evaluation tasks")
    n_query: int = Field(100, gt=0, description="query points per evaluation task")
    steps: list[int] = Field([0, 1, 10], description="fine-tuning steps shown (MAML Fig. 2)")
    finetune_lr: float | None = Field(None, gt=0, description="baseline's lr; default inner_lr")
    seed: int = Field(2017, description="seeds the evaluation tasks: same for every method")
    confidence: float = Field(0.95, gt=0, lt=1)


def pretrained_baseline(data_info: dict[str, Any], learner: GradientMetaLearner) -> MLP:
    return MLP(data_info["input_dim"], learner.config.mlp_hidden, data_info["output_dim"])


def finetuner(baseline: MLP, learner: GradientMetaLearner, lr: float | None) -> MAML:
    """The baseline adapted by plain SGD steps: MAML's inner loop with its own lr."""
    config = learner.config.model_copy(update={"inner_lr": lr or learner.config.inner_lr})
    return MAML(baseline, config, F.mse_loss).eval()


def task_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-task MSE: predictions (..., B, P, 1) against targets (B, P, 1) → (..., B)."""
    return (predictions - targets).pow(2).mean((-2, -1))


def load_pair(ctx: StageContext) -> tuple[GradientMetaLearner, MLP, dict[str, Any]]:
    """The trained learner and its pretrained baseline."""
    learner, saved = load_trained(ctx.model_path)
    baseline = pretrained_baseline(saved["data_info"], learner)
    baseline.load_state_dict(saved["baseline_state_dict"])
    return learner, baseline.eval(), saved


class RegressionTraining(Training):
    """Seeded meta-batches of sine tasks: a meta-step of the learner and a plain
    regression step of the baseline on each; rows every `log_every` iterations (val MSE),
    checkpoints every `checkpoint_every`."""

    step_key = "iteration"

    def __init__(self, ctx: StageContext) -> None:
        exp = ctx.experiment
        cfg: RegressionTrain = exp.train
        self.cfg, self.exp = cfg, exp
        self.device = device = resolve_device(cfg.device, f"experiments.{exp.name}.train.device")
        self.info = load_manifest(ctx.data_dir)
        if self.info.get("task") != "regression":
            raise HypermetaError(
                f"experiments.{exp.name} uses the regression engine on dataset {exp.dataset!r}, "
                "which is not a regression dataset; use dataset: sine."
            )
        torch.manual_seed(cfg.seed)
        self.learner: GradientMetaLearner = build_model(exp.section, self.info).to(device)
        self.baseline = pretrained_baseline(self.info, self.learner).to(device)
        self.optimizer = adam(self.learner.parameters(), cfg.outer_lr)
        self.baseline_optimizer = adam(self.baseline.parameters(), cfg.outer_lr)
        self.scheduler = lr_scheduler(self.optimizer, cfg.lr_schedule, cfg.meta_iterations)
        self.tasks = torch.Generator().manual_seed(cfg.seed)
        _, val = evaluation_tasks(cfg.val_tasks, cfg.k_shot, 100, seed=cfg.seed + 1)
        self.val = val.to(device)
        self.label, self.rounds, self.steps = exp.name, 1, cfg.meta_iterations
        self.row_every, self.checkpoint_every = cfg.log_every, cfg.checkpoint_every
        self.window = {"loss": 0.0, "baseline_loss": 0.0, "n": 0}  # sums since the last row

    def state(self, round: int, step: int) -> dict[str, Any]:
        return {
            "model": self.learner.state_dict(),
            "baseline": self.baseline.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline_optimizer": self.baseline_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "task_generator": self.tasks.get_state(),
            "iteration": round * self.steps + step,
            "window": self.window,  # a row after a resume averages every iteration
        }

    def restore(self, state: dict[str, Any]) -> tuple[int, int]:
        self.learner.load_state_dict(state["model"])
        self.baseline.load_state_dict(state["baseline"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline_optimizer.load_state_dict(state["baseline_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.tasks.set_state(state["task_generator"])
        self.window = state["window"]
        return divmod(state["iteration"], self.steps)

    def resumed(self, round: int, step: int) -> str:
        return f"after iteration {round * self.steps + step}"

    def begin_round(self, round: int, step: int) -> str:
        self.began = time.perf_counter()
        return "meta-training"

    def step(self, round: int, step: int) -> None:
        self.learner.train()
        self.learner.on_iteration(step, self.cfg.meta_iterations)
        episodes = sample_episodes(
            sample_tasks(self.cfg.meta_batch, self.tasks),
            self.cfg.k_shot,
            self.cfg.n_query,
            self.tasks,
        ).to(self.device)
        self.lr = self.optimizer.param_groups[0]["lr"]
        record = self.learner.meta_step(episodes, self.optimizer)
        self.scheduler.step()
        self.window["loss"] += record["loss"]
        self.window["baseline_loss"] += baseline_step(
            self.baseline, self.baseline_optimizer, episodes
        )
        self.window["n"] += 1

    def row(self, round: int, done: int) -> Row:
        self.learner.eval()
        with torch.no_grad():
            val_mse = task_mse(self.learner.query_logits(self.val), self.val.query_y).mean().item()
        row = {
            "epoch": done,  # the x axis of save_curves: here, iterations
            "iteration": done,
            "train_loss": self.window["loss"] / self.window["n"],
            "baseline_train_loss": self.window["baseline_loss"] / self.window["n"],
            "val_mse": val_mse,
            "lr": self.lr,
            "seconds": time.perf_counter() - self.began,
        }
        self.window = {"loss": 0.0, "baseline_loss": 0.0, "n": 0}
        return row

    def postfix(self, last: Row | None) -> dict[str, str]:
        if last is None:
            return {}
        return {"loss": f"{last['train_loss']:.3f}", "val_mse": f"{last['val_mse']:.3f}"}

    def saved(self) -> dict[str, Any]:
        return {
            "experiment": self.exp.section,
            "data_info": self.info,
            "state_dict": on_cpu(self.learner.state_dict()),
            "baseline_state_dict": on_cpu(self.baseline.state_dict()),
        }


def baseline_step(baseline: MLP, optimizer: torch.optim.Optimizer, episodes: Episodes) -> float:
    """One step of plain regression on every point of the meta-batch, tasks mixed."""
    x = torch.cat([episodes.support_x, episodes.query_x], 1).flatten(0, 1)
    y = torch.cat([episodes.support_y, episodes.query_y], 1).flatten(0, 1)
    loss = F.mse_loss(baseline(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


class RegressionEngine(Engine):
    kind = "regression"
    train_config = RegressionTrain
    eval_config = RegressionEval

    def train(self, ctx: StageContext) -> None:
        training = RegressionTraining(ctx)
        history = fit_stage(training, ctx)
        if history:
            print(f"[hypermeta] {ctx.experiment.name}: val MSE {history[-1]['val_mse']:.4f}")
        save_trained(ctx.model_path, training.saved(), history, ctx.history_path)

    def trained_model(self, ctx: StageContext) -> tuple[torch.nn.Module, str]:
        learner, _ = load_trained(ctx.model_path)
        return learner, (
            "learner.query_predictions(Episodes(support_x, support_y, query_x, query_y, 1), "
            "steps) → (1, B, P, 1) query predictions after `steps` inner steps; "
            "x, y (B, K, 1) points of each sine task (hypermeta.data.episodes.Episodes)"
        )

    def evaluate(self, ctx: StageContext) -> dict[str, Any]:
        exp = ctx.experiment
        cfg: RegressionEval = exp.eval
        learner, baseline, _ = load_pair(ctx)
        _, episodes = evaluation_tasks(cfg.n_tasks, max(cfg.shots), cfg.n_query, cfg.seed)
        tuned = finetuner(baseline, learner, cfg.finetune_lr)
        eval_steps = learner.config.eval_inner_steps or learner.config.inner_steps
        metrics: dict[str, Any] = {
            "eval_tasks": cfg.n_tasks,
            "eval_inner_steps": eval_steps,
            "confidence": cfg.confidence,
        }
        steps = tuple(sorted({*cfg.steps, eval_steps}))
        with torch.no_grad():
            for k in cfg.shots:
                shot = with_shots(episodes, k)
                ours = task_mse(learner.query_predictions(shot, max(steps), steps), shot.query_y)
                theirs = task_mse(tuned.query_predictions(shot, max(steps), steps), shot.query_y)
                for i, s in enumerate(steps):
                    if s == eval_steps:
                        mean, half = mean_interval(ours[i], cfg.confidence)
                        metrics[f"mse_k{k}"], metrics[f"mse_k{k}_ci95"] = mean, half
                    if s not in cfg.steps:
                        continue
                    shown = {f"mse_k{k}_step{s}": ours[i], f"baseline_mse_k{k}_step{s}": theirs[i]}
                    for key, mse in shown.items():
                        if torch.isfinite(mse).all():
                            metrics[key] = mse.mean().item()
                        else:  # e.g. Meta-SGD's step sizes, learned for fewer steps
                            print(f"[hypermeta] {exp.name}: {key} diverged; not reported")
        return metrics


register(RegressionEngine())
