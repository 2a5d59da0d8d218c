"""Speed and memory of the model-based few-shot learners against ProtoNet and MAML at the
same episode size: seconds per meta-training episode (forward, backward, one Adam step)
and the peak memory of one meta-iteration (each measured in a fresh subprocess).

Setting: Omniglot-sized inputs (1×28×28), `--way`-way `--shot`-shot episodes with 15
queries per class, `--meta-batch` episodes per step, every learner at width `--width`
(filters per conv block) in its own architecture: ProtoNet's Conv-4, MAML's Conv-4 with
one inner step, Meta Networks' layer-augmented nets (5 blocks, as the authors'), SNAIL and
the LSTM meta-learner as their methods build them. The learners take turns round after
round (meta_timing.py), so a shared machine's load falls on all of them alike.

    python benchmarks/bench_model_based.py [--quick] [--device cpu|cuda] [--width 64]

Prints a table; writes benchmarks/results/model_based.json. A learner whose method is not
registered is skipped, and said so.
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

# name: (registered method, its model section given the width and the number of ways).
LEARNERS = {
    "protonet": ("protonet", lambda width, way: {"hidden": width}),
    "maml (1 step)": ("maml", lambda width, way: {"n_way": way, "width": width, "inner_steps": 1}),
    "metanet": ("metanet", lambda width, way: {"n_way": way, "width": width}),
    "snail": ("snail", lambda width, way: {"n_way": way, "hidden": width}),
    "lstm meta-learner (1 step)": (
        "lstm_meta_learner",
        lambda width, way: {"n_way": way, "width": width, "inner_steps": 1},
    ),
}
QUERIES = 15


def make_step(name: str, args: argparse.Namespace, device: torch.device):
    """A zero-argument meta-training iteration of `args.meta_batch` episodes."""
    method, model = LEARNERS[name]
    spec = get_method(method)
    config = validate_section(spec.model_config, model(args.width, args.way), "model")
    torch.manual_seed(0)
    learner = spec.build(config, {"image_shape": [1, 28, 28]}).to(device).train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.001)
    episodes = make_episodes(args.meta_batch, args.way, args.shot, QUERIES, device)

    def step() -> None:
        learner.meta_step(episodes, optimizer)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 timed rounds, not 10")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=64, help="filters per conv block")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--meta-batch", type=int, default=1, help="episodes per meta-step")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iterations", type=int, default=None, help="timed rounds")
    parser.add_argument("--only", nargs="+", choices=LEARNERS, help="a subset of LEARNERS")
    parser.add_argument("--memory-of", choices=LEARNERS, help=argparse.SUPPRESS)  # subprocess
    args = parser.parse_args()
    args.iterations = args.iterations or (3 if args.quick else 10)
    if args.memory_of:
        print(json.dumps({"peak_memory_mb": peak_memory(make_step, args.memory_of, args)}))
        return

    names = []
    for name in args.only or list(LEARNERS):
        if LEARNERS[name][0] in METHODS:
            names.append(name)
        else:
            print(f"skipping {name}: method {LEARNERS[name][0]!r} is not registered")
    settings = ["--device", args.device, "--width", str(args.width), "--way", str(args.way)]
    settings += ["--shot", str(args.shot), "--meta-batch", str(args.meta_batch)]
    settings += ["--threads", str(args.threads)]
    memory = memory_in_subprocesses(__file__, names, settings)
    times = interleaved_times(make_step, names, args)
    rows = [
        {
            "learner": name,
            "train_seconds_per_episode": statistics.median(times[name]) / args.meta_batch,
            "peak_memory_mb": memory[name],
        }
        for name in names
    ]

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu×{args.threads}"
    print(
        f"\nmodel-based learners against ProtoNet and MAML, {args.way}-way {args.shot}-shot, "
        f"{QUERIES} queries per class, meta-batch {args.meta_batch}, width {args.width}, "
        f"{device_name} (median of {args.iterations} rounds; peak memory of one step)"
    )
    print(f"{'learner':<28}{'train s / episode':>18}{'peak MB':>10}")
    for row in rows:
        print(
            f"{row['learner']:<28}{row['train_seconds_per_episode']:>18.4f}"
            f"{row['peak_memory_mb']:>10.0f}"
        )
    out = Path(__file__).parent / "results" / "model_based.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    setting = {k: v for k, v in vars(args).items() if k != "memory_of"}
    out.write_text(json.dumps({"setting": setting, "device": device_name, "rows": rows}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
