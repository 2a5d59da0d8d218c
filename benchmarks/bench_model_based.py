"""Speed and memory of the model-based meta-learners (issue 19) against ProtoNet and MAML
at the same episode size: seconds per meta-training episode (forward, backward, one Adam
step) and the peak memory of one meta-iteration, side by side.

Setting: 5-way 1-shot episodes of Omniglot-sized inputs (1×28×28), 15 queries per class,
`--meta-batch` episodes per meta-iteration, every learner at its paper's Omniglot size
(Conv-4 of 64 filters; the LSTM meta-learner's of 32, as Ravi & Larochelle), MAML and the
LSTM meta-learner taking the same `--inner-steps` learner updates per episode. Times: the
learners take turns in one process, round after round (meta_timing.py); peak memory: one
meta-iteration per learner in a fresh subprocess (CUDA max_memory_allocated on a GPU, the
rise of the process's peak RSS on a CPU).

    python benchmarks/bench_model_based.py [--quick] [--device cpu|cuda] [--meta-batch 4]

Prints a table; writes benchmarks/results/model_based.json. A learner whose method is not
registered is skipped, and said so. Another learner is one line of LEARNERS.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from meta_timing import interleaved_times, make_episodes, memory_in_subprocesses, peak_memory

from hypermeta.config import validate_section
from hypermeta.methods import METHODS, get_method

N_WAY, K_SHOT, QUERY = 5, 1, 15
# name: (registered method, its model section; "{steps}" is replaced by --inner-steps).
LEARNERS = {
    "protonet": ("protonet", {"hidden": 64}),
    "maml": ("maml", {"n_way": N_WAY, "width": 64, "inner_steps": "{steps}"}),
    "snail": ("snail", {"n_way": N_WAY, "k_shot": K_SHOT, "hidden": 64}),
    "lstm meta-learner": (
        "lstm_meta_learner",
        {"n_way": N_WAY, "width": 32, "inner_steps": "{steps}"},
    ),
    "mann": ("mann", {"n_way": N_WAY}),
    "meta networks": ("metanet", {"n_way": N_WAY, "width": 64}),
}


def model_section(name: str, steps: int) -> dict:
    _, section = LEARNERS[name]
    return {key: steps if value == "{steps}" else value for key, value in section.items()}


def make_step(name: str, args: argparse.Namespace, device: torch.device):
    """A zero-argument meta-iteration of `args.meta_batch` episodes of learner `name`."""
    spec = get_method(LEARNERS[name][0])
    config = validate_section(spec.model_config, model_section(name, args.inner_steps), "model")
    torch.manual_seed(0)
    learner = spec.build(config, {"image_shape": [1, 28, 28]}).to(device).train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.001)
    episodes = make_episodes(args.meta_batch, N_WAY, K_SHOT, QUERY, device)

    def step() -> None:
        learner.meta_step(episodes, optimizer)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 timed rounds, not 5")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--meta-batch", type=int, default=4, help="episodes per meta-step")
    parser.add_argument("--inner-steps", type=int, default=5, help="MAML's and the LSTM's")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iterations", type=int, default=None, help="timed rounds")
    parser.add_argument("--only", nargs="+", choices=LEARNERS, help="a subset of LEARNERS")
    parser.add_argument("--memory-of", choices=LEARNERS, help=argparse.SUPPRESS)  # subprocess
    args = parser.parse_args()
    if args.iterations is None:
        args.iterations = 2 if args.quick else 5
    if args.memory_of:
        print(json.dumps({"peak_memory_mb": peak_memory(make_step, args.memory_of, args)}))
        return

    names = []
    for name in args.only or list(LEARNERS):
        if LEARNERS[name][0] in METHODS:
            names.append(name)
        else:
            print(f"skipping {name}: method {LEARNERS[name][0]!r} is not registered")
    settings = ["--device", args.device, "--meta-batch", str(args.meta_batch)]
    settings += ["--inner-steps", str(args.inner_steps), "--threads", str(args.threads)]
    memory = memory_in_subprocesses(__file__, names, settings)
    times = interleaved_times(make_step, names, args)
    rows = [
        {
            "learner": name,
            "method": LEARNERS[name][0],
            "model": model_section(name, args.inner_steps),
            "seconds_per_episode": statistics.median(times[name]) / args.meta_batch,
            "seconds_per_iteration_all": times[name],
            "peak_memory_mb": memory[name],
        }
        for name in names
    ]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu×{args.threads}"
    print(
        f"\n{N_WAY}-way {K_SHOT}-shot 28×28, {QUERY} queries per class, meta-batch "
        f"{args.meta_batch}, {args.inner_steps} inner steps (MAML, LSTM meta-learner), "
        f"{device_name}, median of {args.iterations} interleaved rounds"
    )
    fastest = min(row["seconds_per_episode"] for row in rows)
    print(f"{'learner':<20}{'ms / episode':>14}{'vs fastest':>12}{'peak MB':>10}")
    for row in rows:
        print(
            f"{row['learner']:<20}{1000 * row['seconds_per_episode']:>14.1f}"
            f"{row['seconds_per_episode'] / fastest:>11.1f}×{row['peak_memory_mb']:>10.0f}"
        )
    out = Path(__file__).parent / "results" / "model_based.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    setting = {k: v for k, v in vars(args).items() if k != "memory_of"}
    out.write_text(json.dumps({"setting": setting, "device": device_name, "rows": rows}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
