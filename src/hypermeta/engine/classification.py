"""Supervised image classification (the CNN / HyperCNN pair of Ha et al. 2016)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hypermeta.config import StrictModel, validate_section
from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.engine import register
from hypermeta.engine.base import Engine, StageContext
from hypermeta.engine.checkpoint import load_saved
from hypermeta.engine.device import DeviceName, adam, autocast, resolve_device
from hypermeta.engine.loop import Row, Training, fit_stage, on_cpu, save_trained
from hypermeta.hyper import parameter_cost
from hypermeta.methods import get_method
from hypermeta.stats import wilson_interval


class ClassificationTrain(StrictModel):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)
    lr_decay: float = Field(1.0, gt=0, le=1, description="multiplies lr after every epoch")
    weight_decay: float = Field(0.0, ge=0)
    max_train_examples: int | None = Field(None, gt=0, description="train on a seeded subset")
    seed: int = 0
    device: DeviceName = "auto"
    amp: bool = True


class ClassificationEval(StrictModel):
    batch_size: int = Field(1000, gt=0)
    confidence: float = Field(0.95, gt=0, lt=1)


class Normalized:
    """uint8 images kept on the device; scaled to float per batch, never re-decoded."""

    def __init__(self, tensors: dict[str, torch.Tensor], info: dict, device: torch.device):
        self.images = tensors["images"].to(device)
        self.labels = tensors["labels"].to(device)
        self.mean, self.std = info["mean"], info["std"]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.images[index].float() / 255 - self.mean) / self.std, self.labels[index]


@torch.no_grad()
def score(model: nn.Module, data: Normalized, batch_size: int, amp: bool) -> dict[str, float]:
    model.eval()
    device = data.images.device
    correct, loss_sum = 0, 0.0
    for start in range(0, len(data), batch_size):
        x, y = data.batch(torch.arange(start, min(start + batch_size, len(data)), device=device))
        with autocast(device, amp):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return {"loss": loss_sum / len(data), "accuracy": correct / len(data), "correct": correct}


def build_model(section: dict[str, Any], data_info: dict[str, Any]) -> nn.Module:
    method = get_method(section["method"])
    config = validate_section(method.model_config, section.get("model", {}), "model")
    return method.build(config, data_info)


def standardization(data_info: dict[str, Any]) -> str:
    """How a model's input images are scaled, for whoever loads it from MLflow."""
    return f"(pixel / 255 - {data_info['mean']:.4f}) / {data_info['std']:.4f}"


def load_trained(model_path: Path) -> tuple[nn.Module, dict[str, Any]]:
    saved = load_saved(model_path)
    model = build_model(saved["experiment"], saved["data_info"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


class ClassificationTraining(Training):
    """Epochs of seeded, shuffled mini-batches; a row and a checkpoint after each."""

    step_key = "epoch"

    def __init__(self, ctx: StageContext) -> None:
        exp = ctx.experiment
        cfg: ClassificationTrain = exp.train
        self.exp, self.cfg = exp, cfg
        self.device = resolve_device(cfg.device, f"experiments.{exp.name}.train.device")
        self.info = load_manifest(ctx.data_dir)
        train_split = load_split(ctx.data_dir, "train")
        if cfg.max_train_examples and cfg.max_train_examples < len(train_split["labels"]):
            keep = torch.randperm(
                len(train_split["labels"]), generator=torch.Generator().manual_seed(cfg.seed)
            )[: cfg.max_train_examples]
            train_split = {k: v[keep] for k, v in train_split.items()}
        self.train_data = Normalized(train_split, self.info, self.device)
        self.val_data = Normalized(load_split(ctx.data_dir, "val"), self.info, self.device)

        torch.manual_seed(cfg.seed)
        self.model = build_model(exp.section, self.info).to(self.device)
        self.optimizer = adam(self.model.parameters(), cfg.lr, cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=cfg.lr_decay)
        self.label, self.rounds = exp.name, cfg.epochs
        self.steps = -(-len(self.train_data) // cfg.batch_size)

    def state(self, round: int, step: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": round,
        }

    def restore(self, state: dict[str, Any]) -> tuple[int, int]:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state["epoch"], 0

    def resumed(self, round: int, step: int) -> str:
        return f"after epoch {round} of {self.cfg.epochs}"

    def begin_round(self, round: int, step: int) -> str:
        self.began = time.perf_counter()
        self.model.train()
        # Seeded per epoch, so a resumed run draws exactly the batches it would have.
        order = torch.randperm(
            len(self.train_data),
            generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + round),
        ).to(self.device)
        self.batches = order.split(self.cfg.batch_size)
        self.seen, self.loss_sum, self.correct = 0, 0.0, 0
        return f"epoch {round + 1}/{self.cfg.epochs}"

    def step(self, round: int, step: int) -> None:
        x, y = self.train_data.batch(self.batches[step])
        with autocast(self.device, self.cfg.amp):
            logits = self.model(x).float()
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.seen += len(y)
        self.loss_sum += loss.item() * len(y)
        self.correct += (logits.argmax(1) == y).sum().item()

    def postfix(self, last: Row | None) -> dict[str, str]:
        return {"loss": f"{self.loss_sum / self.seen:.4f}"}

    def row(self, round: int, done: int) -> Row:
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        val = score(self.model, self.val_data, 1000, self.cfg.amp)
        return {
            "epoch": round + 1,
            "train_loss": self.loss_sum / self.seen,
            "train_accuracy": self.correct / self.seen,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": lr,
            "epoch_seconds": time.perf_counter() - self.began,
        }

    def line(self, row: Row) -> str:
        return (
            f"epoch {row['epoch']}/{self.cfg.epochs}: "
            f"train loss {row['train_loss']:.4f}, val accuracy {row['val_accuracy']:.4f}"
        )

    def saved(self) -> dict[str, Any]:
        return {
            "experiment": self.exp.section,
            "data_info": self.info,
            "state_dict": on_cpu(self.model.state_dict()),
        }


class ClassificationEngine(Engine):
    kind = "classification"
    train_config = ClassificationTrain
    eval_config = ClassificationEval

    def train(self, ctx: StageContext) -> None:
        training = ClassificationTraining(ctx)
        history = fit_stage(training, ctx)
        save_trained(ctx.model_path, training.saved(), history, ctx.history_path)

    def trained_model(self, ctx: StageContext) -> tuple[nn.Module, str]:
        model, saved = load_trained(ctx.model_path)
        return model, (
            "model(images) → class logits; images (N, C, H, W) float, "
            f"{standardization(saved['data_info'])}"
        )

    def evaluate(self, ctx: StageContext) -> dict[str, Any]:
        exp = ctx.experiment
        cfg: ClassificationEval = exp.eval
        device = resolve_device(exp.train.device, f"experiments.{exp.name}.train.device")
        model, saved = load_trained(ctx.model_path)
        model.to(device)
        test = Normalized(load_split(ctx.data_dir, "test"), saved["data_info"], device)
        result = score(model, test, cfg.batch_size, exp.train.amp)
        low, high = wilson_interval(result["correct"], len(test), cfg.confidence)
        metrics = {
            "test_accuracy": result["accuracy"],
            "test_accuracy_ci_low": low,
            "test_accuracy_ci_high": high,
            "test_error": 1 - result["accuracy"],
            "test_error_ci_low": 1 - high,
            "test_error_ci_high": 1 - low,
            "test_loss": result["loss"],
            "test_examples": len(test),
            "confidence": cfg.confidence,
            "params_total": sum(p.numel() for p in model.parameters()),
        }
        featured = get_method(exp.method).featured_weight
        if featured:
            metrics[f"params_{featured.replace('.', '_')}"] = parameter_cost(model, featured)
        return metrics


register(ClassificationEngine())
