"""Character-level language modelling (LSTM / LN-LSTM / HyperLSTM of Ha et al. 2016).

Training is truncated back-propagation through time over B contiguous streams of the
training text, the hidden state carried (detached) from one batch to the next. After
every epoch the validation split is scored; the learning rate is multiplied by
`lr_decay` after an epoch that did not improve it, and training stops after `patience`
such epochs in a row. The model kept is the one with the best validation bpc; a
non-finite validation bpc (diverged training) stops training at once, and fails with
the fix when no earlier epoch is worth keeping.
Evaluation scores every character of the split (bits per character, bpc) with a 95% CI
over contiguous blocks (text_scoring.py). `lm_cli.py` runs the same `fit`, scoring and
sampling (text_generation.py).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from hypermeta.config import StrictModel
from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.data.text import Vocabulary
from hypermeta.engine import loop, register
from hypermeta.engine.base import Engine, StageContext
from hypermeta.engine.checkpoint import Checkpointer, load_saved
from hypermeta.engine.classification import build_model
from hypermeta.engine.device import DeviceName, adam, autocast, resolve_device
from hypermeta.engine.loop import EarlyStopping, Row, Training, fit_stage, on_cpu, save_trained
from hypermeta.engine.text_scoring import (
    LN2,
    bits_per_char,
    block_means,
    streams,
    token_bits,
    unigram_bits,
)
from hypermeta.errors import HypermetaError
from hypermeta.nn.lstm import CharLanguageModel, State
from hypermeta.stats import mean_interval


class LanguageModelTrain(StrictModel):
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(32, gt=0, description="parallel streams of the training text")
    seq_length: int = Field(100, gt=0, description="steps of truncated back-propagation")
    lr: float = Field(1e-3, gt=0)
    lr_decay: float = Field(1.0, gt=0, le=1, description="lr factor after an epoch without gain")
    patience: int = Field(3, gt=0, description="epochs without validation gain before stopping")
    clip: float = Field(1.0, gt=0, description="gradient-norm clipping")
    max_train_tokens: int | None = Field(None, gt=0, description="train on a prefix")
    max_val_tokens: int | None = Field(None, gt=0, description="validate on a prefix")
    checkpoint_every: int = Field(500, gt=0, description="batches between mid-epoch checkpoints")
    seed: int = 0
    device: DeviceName = "auto"
    amp: bool = False
    cpu_threads: int | None = Field(
        None, gt=0, description="torch CPU threads; 1 avoids thread contention on shared CPUs"
    )


class LanguageModelEval(StrictModel):
    batch_size: int = Field(16, gt=0, description="parallel streams of the test text")
    seq_length: int = Field(200, gt=0)
    block_length: int = Field(1000, gt=0, description="characters per block of the CI")
    confidence: float = Field(0.95, gt=0, lt=1)
    sample_length: int = Field(500, gt=0)
    sample_temperatures: list[float] = [0.5, 1.0]
    sample_prime: str = "The "
    heatmap_text: str = "the meaning of life is"
    seed: int = 0


def use_threads(threads: int | None) -> None:
    """Small recurrent nets gain little from intra-op threads, and on a busy CPU spinning
    threads slow them many-fold; the experiment chooses."""
    if threads:
        torch.set_num_threads(threads)


def detach(state: State) -> State:
    return tuple(s.detach() for s in state)


class LanguageModelTraining(Training):
    """Epochs of truncated back-propagation through time over B streams of the text,
    the hidden state carried (detached) from window to window; every `checkpoint_every`
    windows a checkpoint (with the state and the random streams of dropout), after each
    epoch a row on the validation text. The weights kept are the best validation epoch's."""

    step_key = "epoch"

    def __init__(
        self,
        model: CharLanguageModel,
        train_tokens: Tensor,
        val_tokens: Tensor,
        cfg: LanguageModelTrain,
        label: str,
    ) -> None:
        self.model, self.cfg, self.label = model, cfg, label
        self.device = device = next(model.parameters()).device
        if cfg.max_train_tokens:
            train_tokens = train_tokens[: cfg.max_train_tokens]
        if cfg.max_val_tokens:
            val_tokens = val_tokens[: cfg.max_val_tokens]
        if len(train_tokens) < 2 * cfg.batch_size or len(val_tokens) < 2:
            raise HypermetaError(
                f"{label}: the training text ({len(train_tokens)} characters) or validation "
                f"text ({len(val_tokens)}) is too short for batch size {cfg.batch_size}; use "
                "more text or a smaller batch size."
            )
        self.val_tokens = val_tokens
        data, real = streams(train_tokens, cfg.batch_size)
        self.data, self.real = data.to(device), real.to(device)
        self.windows = list(range(0, data.shape[0] - 1, cfg.seq_length))
        self.optimizer = adam(model.parameters(), cfg.lr)
        self.rounds, self.steps = cfg.epochs, len(self.windows)
        self.checkpoint_every = cfg.checkpoint_every
        self.early_stopping = EarlyStopping(
            "val_bpc",
            cfg.patience,
            diverged_fix="lower the learning rate (--lr or train.lr) or clip gradients harder "
            "(a smaller --clip or train.clip)",
        )
        self.best_weights: dict[str, Tensor] = {}
        self.running = {"bits": 0.0, "tokens": 0, "seconds": 0.0}
        self.resumed_state: State | None = None

    def state(self, round: int, step: int) -> dict[str, Any]:
        device = self.device
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_weights": self.best_weights,
            "epoch": round,
            "window": step,
            "running": self.running,
            "state": [s.cpu() for s in self.hidden] if step else None,
            "rng": torch.get_rng_state(),
            # Only the model's GPU: other GPUs draw nothing for it, and a resume on a
            # machine with fewer GPUs could not restore their states.
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }

    def restore(self, state: dict[str, Any]) -> tuple[int, int]:
        device = self.device
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best_weights, self.running = state["best_weights"], state["running"]
        if state["state"]:
            self.resumed_state = tuple(s.to(device) for s in state["state"])
        torch.set_rng_state(state["rng"])  # dropout masks continue as if never stopped
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)  # GPU dropout draws here
        return state["epoch"], state["window"]

    def resumed(self, round: int, step: int) -> str:
        return f"after epoch {round}, batch {step}"

    def begin_round(self, round: int, step: int) -> str:
        self.model.train()
        self.hidden = self.resumed_state or self.model.initial_state(
            self.data.shape[1], self.device
        )
        self.resumed_state = None
        return f"epoch {round + 1}"

    def step(self, round: int, step: int) -> None:
        cfg, running = self.cfg, self.running
        began = time.perf_counter()
        start = self.windows[step]
        targets = self.data[start + 1 : start + 1 + cfg.seq_length]
        with autocast(self.device, cfg.amp):
            logits, state = self.model(self.data[start : start + len(targets)], self.hidden)
        self.hidden = detach(state)
        # Padding at the end of the last stream is no text: it is never a target.
        scored = self.real[start + 1 : start + 1 + len(targets)]
        loss = F.cross_entropy(logits.float()[scored], targets[scored])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        characters = int(scored.sum())
        running["bits"] += loss.item() / LN2 * characters
        running["tokens"] += characters
        running["seconds"] += time.perf_counter() - began

    def postfix(self, last: Row | None) -> dict[str, str]:
        running = self.running
        return {
            "bpc": f"{running['bits'] / running['tokens']:.3f}",
            "tok_s": f"{running['tokens'] / running['seconds']:.0f}",
        }

    def row(self, round: int, done: int) -> Row:
        cfg, running = self.cfg, self.running
        began = time.perf_counter()
        val_bpc = bits_per_char(
            *token_bits(self.model, self.val_tokens, cfg.batch_size, cfg.seq_length)
        )
        self.running = {"bits": 0.0, "tokens": 0, "seconds": 0.0}
        return {
            "epoch": round + 1,
            "train_bpc": running["bits"] / max(running["tokens"], 1),
            "val_bpc": val_bpc,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_tokens_per_second": running["tokens"] / max(running["seconds"], 1e-9),
            "val_seconds": time.perf_counter() - began,
        }

    def line(self, row: Row) -> str:
        return (
            f"epoch {row['epoch']}/{self.cfg.epochs}: train bpc {row['train_bpc']:.4f}, "
            f"val bpc {row['val_bpc']:.4f}, {row['train_tokens_per_second']:.0f} tokens/s"
        )

    def validated(self, improved: bool) -> None:
        if improved:
            self.best_weights = {
                k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
            }
        else:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.cfg.lr_decay


def fit(
    model: CharLanguageModel,
    train_tokens: Tensor,
    val_tokens: Tensor,
    cfg: LanguageModelTrain,
    checkpointer: Checkpointer,
    label: str,
    log_metrics: Callable[[dict[str, float], int], None] = lambda row, step: None,
) -> tuple[list[dict[str, float]], dict[str, Tensor]]:
    """Train `model` (already on its device, torch seeded by the caller); returns the
    history and the weights of the best validation epoch."""
    training = LanguageModelTraining(model, train_tokens, val_tokens, cfg, label)
    history = loop.fit(training, checkpointer, log_metrics)
    return history, training.best_weights


def save_model(
    path: Path,
    section: dict[str, Any],
    vocab: Vocabulary,
    weights: dict[str, Tensor],
    history: list[dict[str, float]],
    history_path: Path | None = None,
) -> None:
    """What eval / generate need: method, model config, vocabulary, weights."""
    saved = {
        "experiment": {"method": section["method"], "model": section.get("model", {})},
        "data_info": {"vocab": vocab.symbols, "vocab_size": len(vocab)},
        "state_dict": on_cpu(weights),
    }
    save_trained(path, saved, history, history_path)


def load_trained(path: Path, device: torch.device) -> tuple[CharLanguageModel, Vocabulary, dict]:
    saved = load_saved(path, "train one with `lm train`, or pass --load-model a model.pt it saved")
    if "vocab" not in saved.get("data_info", {}):
        raise HypermetaError(f"{path} is not a language model; pass a model saved by `lm train`.")
    model = build_model(saved["experiment"], saved["data_info"])
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), Vocabulary(saved["data_info"]["vocab"]), saved


class LanguageModelEngine(Engine):
    kind = "language_model"
    train_config = LanguageModelTrain
    eval_config = LanguageModelEval

    def train(self, ctx: StageContext) -> None:
        exp = ctx.experiment
        cfg: LanguageModelTrain = exp.train
        device = resolve_device(cfg.device, f"experiments.{exp.name}.train.device")
        use_threads(cfg.cpu_threads)
        info = load_manifest(ctx.data_dir)
        torch.manual_seed(cfg.seed)
        model = build_model(exp.section, info).to(device)
        training = LanguageModelTraining(
            model,
            load_split(ctx.data_dir, "train")["tokens"],
            load_split(ctx.data_dir, "val")["tokens"],
            cfg,
            exp.name,
        )
        history = fit_stage(training, ctx)
        vocab = Vocabulary(info["vocab"])
        save_model(
            ctx.model_path, exp.section, vocab, training.best_weights, history, ctx.history_path
        )

    def trained_model(self, ctx: StageContext) -> tuple[torch.nn.Module, str]:
        model, vocab, _ = load_trained(ctx.model_path, torch.device("cpu"))
        return model, (
            "model(tokens (T, B) long, model.initial_state(B, device)) → (logits (T, B, V), "
            f"state); the vocabulary, in token order: {json.dumps(vocab.symbols)}"
        )

    def evaluate(self, ctx: StageContext) -> dict[str, Any]:
        exp = ctx.experiment
        cfg: LanguageModelEval = exp.eval
        device = resolve_device(exp.train.device, f"experiments.{exp.name}.train.device")
        use_threads(exp.train.cpu_threads)
        model, vocab, saved = load_trained(ctx.model_path, device)
        info = load_manifest(ctx.data_dir)
        test = load_split(ctx.data_dir, "test")["tokens"]
        began = time.perf_counter()
        bits, real = token_bits(model, test, cfg.batch_size, cfg.seq_length, exp.train.amp)
        seconds = time.perf_counter() - began
        bpc = bits_per_char(bits, real)
        _, half = mean_interval(block_means(bits, real, cfg.block_length), cfg.confidence)
        train = load_split(ctx.data_dir, "train")["tokens"]
        return {
            "test_bpc": bpc,
            "test_bpc_ci_low": bpc - half,
            "test_bpc_ci_high": bpc + half,
            "test_characters": int(real.sum()),
            "test_unknown_characters": int(info["unknown_characters"]["test"]),
            "unigram_bpc": unigram_bits(train, test, len(vocab)),
            "uniform_bpc": math.log2(len(vocab)),
            "best_val_bpc": min(row["val_bpc"] for row in saved["history"]),
            "epochs_trained": len(saved["history"]),
            "eval_tokens_per_second": int(real.sum()) / seconds,
            "confidence": cfg.confidence,
            "params_total": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }


register(LanguageModelEngine())
