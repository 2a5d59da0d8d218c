"""Tokens per second of character language models: torch's LSTM (fused CPU kernel /
cuDNN) vs our LN-LSTM vs HyperLSTM (eager, as trained, and TorchScript-compiled),
for training (forward + backward + Adam step) and evaluation (forward, no grad).

    python benchmarks/bench_lm.py [--quick] [--device cpu|cuda] [--threads 1]

Prints a table and writes benchmarks/results/lm.json. `x LSTM` is time per token
relative to torch's LSTM at the same size and phase; each figure is the fastest of a
few repeats, the variants taking turns within each round, so load from other processes
on a shared machine disturbs it less and falls on all variants alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hypermeta.hyper.hyperlstm import HyperLSTM  # noqa: E402
from hypermeta.nn.lstm import LNLSTM, CharLanguageModel, TorchLSTM  # noqa: E402

VOCAB, EMBEDDING, HYPER_UNITS, HYPER_EMBEDDING = 50, 128, 128, 4

VARIANTS = {
    "lstm (torch)": lambda hidden: TorchLSTM(EMBEDDING, hidden),
    "ln-lstm": lambda hidden: LNLSTM(EMBEDDING, hidden),
    "hyperlstm": lambda hidden: HyperLSTM(
        EMBEDDING, hidden, hyper_num_units=HYPER_UNITS, hyper_embedding_size=HYPER_EMBEDDING
    ),
    "hyperlstm (torchscript)": lambda hidden: HyperLSTM(
        EMBEDDING,
        hidden,
        hyper_num_units=HYPER_UNITS,
        hyper_embedding_size=HYPER_EMBEDDING,
        script=True,
    ),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def one_pass(
    model: CharLanguageModel, train: bool, batch: int, steps: int, device: torch.device
) -> Callable[[], None]:
    """A zero-argument pass over one batch of `steps` tokens: forward, and for training
    backward and an Adam step."""
    tokens = torch.randint(0, VOCAB, (steps + 1, batch), device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train(train)

    def once() -> None:
        state = model.initial_state(batch, device)
        if train:
            logits, _ = model(tokens[:-1], state)
            loss = F.cross_entropy(logits.flatten(0, 1), tokens[1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                model(tokens[:-1], state)
        synchronize(device)

    return once


def fastest_seconds(passes: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Fastest time of each pass over `repeats` rounds, the passes taking turns within a
    round, so a shared machine's changing load falls on all of them alike."""
    for once in passes.values():
        for _ in range(2):  # warm-up: TorchScript profiles its first runs, cuDNN picks kernels
            once()
    fastest = dict.fromkeys(passes, float("inf"))
    for _ in range(repeats):
        for name, once in passes.items():
            began = time.perf_counter()
            once()
            fastest[name] = min(fastest[name], time.perf_counter() - began)
    return fastest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="hidden 256 only, short runs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-length", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [256] if args.quick else [256, 1000]
    steps = 25 if args.quick else args.seq_length
    repeats = 2 if args.quick else 5
    rows = []
    for hidden in sizes:
        for phase in ("train", "eval"):
            passes = {}
            for name, make in VARIANTS.items():
                torch.manual_seed(0)
                model = CharLanguageModel(VOCAB, EMBEDDING, make(hidden)).to(device)
                passes[name] = one_pass(model, phase == "train", args.batch_size, steps, device)
            seconds = fastest_seconds(passes, repeats)
            baseline = args.batch_size * steps / seconds["lstm (torch)"]
            for name, elapsed in seconds.items():
                speed = args.batch_size * steps / elapsed
                rows.append(
                    {
                        "hidden": hidden,
                        "phase": phase,
                        "model": name,
                        "tokens_per_second": speed,
                        "time_per_token_vs_lstm": baseline / speed,
                    }
                )
                print(
                    f"hidden {hidden:5d}  {phase:5s}  {name:22s} "
                    f"{speed:10.0f} tok/s  {baseline / speed:6.2f} x LSTM",
                    flush=True,
                )
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "seq_length": steps,
        "torch": torch.__version__,
        "rows": rows,
    }
    out = Path(__file__).resolve().parent / "results" / "lm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
