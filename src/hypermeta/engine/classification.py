"""Supervised image classification (the CNN / HyperCNN pair of Ha et al. 2016)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hypermeta.atomic import torch_save, write_json
from hypermeta.config import StrictModel, validate_section
from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.engine import register
from hypermeta.engine.base import Engine, StageContext
from hypermeta.engine.checkpoint import Checkpointer, load_saved
from hypermeta.engine.device import DeviceName, adam, autocast, resolve_device
from hypermeta.hyper import parameter_cost
from hypermeta.methods import get_method
from hypermeta.progress import progress
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


class ClassificationEngine(Engine):
    kind = "classification"
    train_config = ClassificationTrain
    eval_config = ClassificationEval

    def train(self, ctx: StageContext) -> None:
        exp = ctx.experiment
        cfg: ClassificationTrain = exp.train
        device = resolve_device(cfg.device, f"experiments.{exp.name}.train.device")
        info = load_manifest(ctx.data_dir)
        train_split = load_split(ctx.data_dir, "train")
        if cfg.max_train_examples and cfg.max_train_examples < len(train_split["labels"]):
            keep = torch.randperm(
                len(train_split["labels"]), generator=torch.Generator().manual_seed(cfg.seed)
            )[: cfg.max_train_examples]
            train_split = {k: v[keep] for k, v in train_split.items()}
        train_data = Normalized(train_split, info, device)
        val_data = Normalized(load_split(ctx.data_dir, "val"), info, device)

        torch.manual_seed(cfg.seed)
        model = build_model(exp.section, info).to(device)
        optimizer = adam(model.parameters(), cfg.lr, cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
        checkpointer = Checkpointer(ctx.checkpoint_path, exp.params_hash)
        history: list[dict[str, float]] = []
        start_epoch = 0
        if state := checkpointer.load():
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history, start_epoch = state["history"], state["epoch"]
            print(f"[hypermeta] {exp.name}: resuming after epoch {start_epoch} of {cfg.epochs}")
            for row in history:  # the new MLflow run shows the whole curve
                ctx.tracker.log_metrics(row, step=row["epoch"])

        for epoch in range(start_epoch, cfg.epochs):
            began = time.perf_counter()
            model.train()
            # Seeded per epoch, so a resumed run draws exactly the batches it would have.
            order = torch.randperm(
                len(train_data), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            ).to(device)
            batches = order.split(cfg.batch_size)
            seen, loss_sum, correct = 0, 0.0, 0
            bar = progress(batches, desc=f"{exp.name} epoch {epoch + 1}/{cfg.epochs}")
            for index in bar:
                x, y = train_data.batch(index)
                with autocast(device, cfg.amp):
                    logits = model(x).float()
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(y)
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", refresh=False)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            val = score(model, val_data, 1000, cfg.amp)
            row = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / seen,
                "train_accuracy": correct / seen,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "lr": lr,
                "epoch_seconds": time.perf_counter() - began,
            }
            history.append(row)
            ctx.tracker.log_metrics(row, step=epoch + 1)
            print(
                f"[hypermeta] {exp.name} epoch {epoch + 1}/{cfg.epochs}: "
                f"train loss {row['train_loss']:.4f}, val accuracy {row['val_accuracy']:.4f}"
            )
            checkpointer.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                }
            )

        torch_save(
            ctx.model_path,
            {
                "experiment": exp.section,
                "data_info": info,
                "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "history": history,
            },
        )
        write_json(ctx.history_path, history)

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
