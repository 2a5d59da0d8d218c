"""Character-level language modelling (LSTM / LN-LSTM / HyperLSTM of Ha et al. 2016).

Training is truncated back-propagation through time over B contiguous streams of the
training text, the hidden state carried (detached) from one batch to the next. After
every epoch the validation split is scored; the learning rate is multiplied by
`lr_decay` after an epoch that did not improve it, and training stops after `patience`
such epochs in a row. The model kept is the one with the best validation bpc; a
non-finite validation bpc (diverged training) stops training at once, and fails with
the fix when no earlier epoch is worth keeping.
Evaluation scores every character of the split (bits per character, bpc) with a 95% CI
over contiguous blocks. `lm_cli.py` runs the same `fit` / `token_bits` / `generate`.
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

from hypermeta.atomic import torch_save, write_json
from hypermeta.config import StrictModel
from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.data.text import Vocabulary, from_display, to_display
from hypermeta.engine import register
from hypermeta.engine.base import Engine, StageContext
from hypermeta.engine.checkpoint import Checkpointer, load_saved
from hypermeta.engine.classification import build_model
from hypermeta.engine.device import DeviceName, adam, autocast, resolve_device
from hypermeta.errors import HypermetaError
from hypermeta.hyper.hyperlstm import HyperLSTM
from hypermeta.nn.lstm import CharLanguageModel, State
from hypermeta.progress import progress
from hypermeta.stats import mean_interval

LN2 = math.log(2.0)


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


def streams(tokens: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """`tokens` cut into `batch_size` contiguous streams `[n, B]` (time-major), padded at
    the end, and the mask of real (unpadded) positions."""
    batch_size = max(1, min(batch_size, len(tokens) // 2))
    n = -(-len(tokens) // batch_size)
    padded = torch.zeros(n * batch_size, dtype=torch.long)
    padded[: len(tokens)] = tokens.long()
    real = torch.arange(n * batch_size) < len(tokens)
    return padded.view(batch_size, n).t(), real.view(batch_size, n).t()


def use_threads(threads: int | None) -> None:
    """Small recurrent nets gain little from intra-op threads, and on a busy CPU spinning
    threads slow them many-fold; the experiment chooses."""
    if threads:
        torch.set_num_threads(threads)


def detach(state: State) -> State:
    return tuple(s.detach() for s in state)


@torch.no_grad()
def token_bits(
    model: CharLanguageModel, tokens: Tensor, batch_size: int, seq_length: int, amp: bool = False
) -> tuple[Tensor, Tensor]:
    """Bits of every predicted character `[n-1, B]` and which of them are real (not padding).

    Each stream's first character is context only, so len(tokens) - B are scored."""
    model.eval()
    device = next(model.parameters()).device
    data, real = streams(tokens, batch_size)
    data = data.to(device)
    bits = torch.zeros(data.shape[0] - 1, data.shape[1])
    state = model.initial_state(data.shape[1], device)
    for start in range(0, data.shape[0] - 1, seq_length):
        targets = data[start + 1 : start + 1 + seq_length]
        with autocast(device, amp):
            logits, state = model(data[start : start + len(targets)], state)
        nats = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        bits[start : start + len(targets)] = (nats / LN2).view_as(targets).cpu()
    return bits, real[1:]


def bits_per_char(bits: Tensor, real: Tensor) -> float:
    return (bits[real].sum() / real.sum().clamp_min(1)).item()


def block_means(bits: Tensor, real: Tensor, block_length: int) -> Tensor:
    """Mean bpc of each block of `block_length` consecutive characters of one stream."""
    n = -(-bits.shape[0] // block_length) * block_length
    pad = n - bits.shape[0]
    bits = F.pad(bits, (0, 0, 0, pad)).t().reshape(-1, block_length)
    real = F.pad(real, (0, 0, 0, pad)).t().reshape(-1, block_length).float()
    counts = real.sum(1)
    return (bits * real).sum(1)[counts > 0] / counts[counts > 0]


def unigram_bits(train: Tensor, test: Tensor, vocab_size: int) -> float:
    """bpc on `test` of the training text's character frequencies (add-one smoothed):
    the bar a model that learned anything must clear."""
    counts = torch.bincount(train.long(), minlength=vocab_size).double() + 1
    log_p = (counts / counts.sum()).log2()
    return -log_p[test.long()].mean().item()


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
    device = next(model.parameters()).device
    if cfg.max_train_tokens:
        train_tokens = train_tokens[: cfg.max_train_tokens]
    if cfg.max_val_tokens:
        val_tokens = val_tokens[: cfg.max_val_tokens]
    if len(train_tokens) < 2 * cfg.batch_size or len(val_tokens) < 2:
        raise HypermetaError(
            f"{label}: the training text ({len(train_tokens)} characters) or validation text "
            f"({len(val_tokens)}) is too short for batch size {cfg.batch_size}; use more text "
            "or a smaller batch size."
        )
    data, real = streams(train_tokens, cfg.batch_size)
    data, real = data.to(device), real.to(device)
    windows = list(range(0, data.shape[0] - 1, cfg.seq_length))
    optimizer = adam(model.parameters(), cfg.lr)
    history: list[dict[str, float]] = []
    best_val, best_weights, stale = math.inf, {}, 0
    start_epoch, start_window, resumed_state = 0, 0, None
    running = {"bits": 0.0, "tokens": 0, "seconds": 0.0}
    if saved := checkpointer.load():
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        history, best_val, best_weights = saved["history"], saved["best_val"], saved["best_weights"]
        stale, start_epoch, start_window = saved["stale"], saved["epoch"], saved["window"]
        running = saved["running"]
        resumed_state = tuple(s.to(device) for s in saved["state"]) if saved["state"] else None
        torch.set_rng_state(saved["rng"])  # dropout masks continue as if never stopped
        if device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)  # GPU dropout draws here
        print(f"[hypermeta] {label}: resuming after epoch {start_epoch}, batch {start_window}")
        for row in history:  # the new MLflow run shows the whole curve
            log_metrics(row, row["epoch"])

    def checkpoint(epoch: int, window: int, state: State | None) -> None:
        checkpointer.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": history,
                "best_val": best_val,
                "best_weights": best_weights,
                "stale": stale,
                "epoch": epoch,
                "window": window,
                "running": running,
                "state": [s.cpu() for s in state] if state is not None else None,
                "rng": torch.get_rng_state(),
                # Only the model's GPU: other GPUs draw nothing for it, and a resume on a
                # machine with fewer GPUs could not restore their states.
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            }
        )

    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:  # also when a finished, early-stopped run is rerun
            print(f"[hypermeta] {label}: no validation gain for {stale} epochs; stopping early.")
            break
        model.train()
        state = resumed_state or model.initial_state(data.shape[1], device)
        resumed_state = None
        bar = progress(range(start_window, len(windows)), desc=f"{label} epoch {epoch + 1}")
        for window in bar:
            began = time.perf_counter()
            start = windows[window]
            targets = data[start + 1 : start + 1 + cfg.seq_length]
            with autocast(device, cfg.amp):
                logits, state = model(data[start : start + len(targets)], state)
            state = detach(state)
            # Padding at the end of the last stream is no text: it is never a target.
            scored = real[start + 1 : start + 1 + len(targets)]
            loss = F.cross_entropy(logits.float()[scored], targets[scored])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            characters = int(scored.sum())
            running["bits"] += loss.item() / LN2 * characters
            running["tokens"] += characters
            running["seconds"] += time.perf_counter() - began
            bar.set_postfix(
                bpc=f"{running['bits'] / running['tokens']:.3f}",
                tok_s=f"{running['tokens'] / running['seconds']:.0f}",
                refresh=False,  # shown at the bar's next refresh, with its count
            )
            if (window + 1) % cfg.checkpoint_every == 0 and window + 1 < len(windows):
                checkpoint(epoch, window + 1, state)
        start_window = 0
        began = time.perf_counter()
        val_bpc = bits_per_char(*token_bits(model, val_tokens, cfg.batch_size, cfg.seq_length))
        if not math.isfinite(val_bpc):  # diverged weights never recover: stop now
            if not best_weights:
                raise HypermetaError(
                    f"{label}: validation bpc is {val_bpc} after epoch {epoch + 1}, so training "
                    "diverged before any epoch worth keeping; lower the learning rate "
                    "(--lr or train.lr) or clip gradients harder (a smaller --clip or train.clip)."
                )
            print(
                f"[hypermeta] {label}: validation bpc is {val_bpc} after epoch {epoch + 1} "
                f"(training diverged); stopping with the best model (val bpc {best_val:.4f})."
            )
            break
        row = {
            "epoch": epoch + 1,
            "train_bpc": running["bits"] / max(running["tokens"], 1),
            "val_bpc": val_bpc,
            "lr": optimizer.param_groups[0]["lr"],
            "train_tokens_per_second": running["tokens"] / max(running["seconds"], 1e-9),
            "val_seconds": time.perf_counter() - began,
        }
        history.append(row)
        log_metrics(row, epoch + 1)
        print(
            f"[hypermeta] {label} epoch {epoch + 1}/{cfg.epochs}: "
            f"train bpc {row['train_bpc']:.4f}, "
            f"val bpc {val_bpc:.4f}, {row['train_tokens_per_second']:.0f} tokens/s"
        )
        running = {"bits": 0.0, "tokens": 0, "seconds": 0.0}
        if val_bpc < best_val:
            best_val, stale = val_bpc, 0
            best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            for group in optimizer.param_groups:
                group["lr"] *= cfg.lr_decay
        checkpoint(epoch + 1, 0, None)
    return history, best_weights


def save_model(
    path: Path,
    section: dict[str, Any],
    vocab: Vocabulary,
    weights: dict[str, Tensor],
    history: list[dict[str, float]],
) -> None:
    """What eval / generate need: method, model config, vocabulary, weights."""
    torch_save(
        path,
        {
            "experiment": {"method": section["method"], "model": section.get("model", {})},
            "data_info": {"vocab": vocab.symbols, "vocab_size": len(vocab)},
            "state_dict": {k: v.cpu() for k, v in weights.items()},
            "history": history,
        },
    )


def load_trained(path: Path, device: torch.device) -> tuple[CharLanguageModel, Vocabulary, dict]:
    saved = load_saved(path, "train one with `lm train`, or pass --load-model a model.pt it saved")
    if "vocab" not in saved.get("data_info", {}):
        raise HypermetaError(f"{path} is not a language model; pass a model saved by `lm train`.")
    model = build_model(saved["experiment"], saved["data_info"])
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), Vocabulary(saved["data_info"]["vocab"]), saved


@torch.no_grad()
def generate(
    model: CharLanguageModel,
    vocab: Vocabulary,
    prime: str,
    length: int,
    temperature: float,
    seed: int,
) -> tuple[str, int]:
    """`prime` followed by `length` sampled characters (the same seed gives the same text),
    as displayable text (bytes that are not UTF-8 shown as U+FFFD), and how many
    characters of `prime` the model does not know (read as the unknown symbol)."""
    if temperature <= 0:
        raise HypermetaError(f"temperature must be positive (got {temperature}); try 0.5 or 1.0.")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    primed = from_display(prime)
    context = vocab.encode(primed or "\n")
    state = model.initial_state(1, device)
    logits, state = model(context.tokens.long().view(-1, 1).to(device), state)
    sampled = []
    for _ in range(length):
        probabilities = torch.softmax(logits[-1, 0].float().cpu() / temperature, 0)
        probabilities[0] = 0.0  # never emit the unknown symbol
        token = torch.multinomial(probabilities, 1, generator=generator)
        sampled.append(token.item())
        logits, state = model(token.view(1, 1).to(device), state)
    return to_display(primed + vocab.decode(sampled)), context.unknown


@torch.no_grad()
def hyper_scales(model: CharLanguageModel, vocab: Vocabulary, text: str) -> Tensor:
    """d_h(z) of the first layer over `text`: `[4 gates, H, T]`, scales of W_h per step."""
    if not isinstance(model.rnn, HyperLSTM):
        raise HypermetaError("weight scales exist only for a HyperLSTM model.")
    model.eval()
    device = next(model.parameters()).device
    tokens = vocab.encode(from_display(text)).tokens.long().view(-1, 1).to(device)
    state = model.initial_state(1, device)
    _, _, scales = model.rnn.run(model.embedding(tokens), state, keep_scales=True)
    steps = scales[0][:, 0]  # [T, 4H]
    return steps.view(len(tokens), 4, -1).permute(1, 2, 0).cpu()


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
        history, best = fit(
            model,
            load_split(ctx.data_dir, "train")["tokens"],
            load_split(ctx.data_dir, "val")["tokens"],
            cfg,
            Checkpointer(ctx.checkpoint_path, exp.params_hash),
            exp.name,
            ctx.tracker.log_metrics,
        )
        save_model(ctx.model_path, exp.section, Vocabulary(info["vocab"]), best, history)
        write_json(ctx.history_path, history)

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
