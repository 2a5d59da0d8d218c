"""Speed and memory of the support-set hypernetworks against ProtoNet and MAML: seconds
per meta-iteration (forward, backward, one Adam step) and peak memory, side by side in one
run, on the same episodes.

Setting: 5-way 1-shot Omniglot-sized inputs (1×28×28), 15 queries per class, meta-batch
32, Conv-4 of `--width` filters in every learner. Each learner runs its own
`meta_step` as the engine calls it. Times: the learners take turns in one process,
round after round (a shared machine's load hits all alike); peak memory: one
meta-iteration per learner in a fresh subprocess (CUDA max_memory_allocated on a GPU,
the rise of the process's peak RSS on a CPU).

    python benchmarks/bench_fewshot_hyper.py [--quick] [--device cpu|cuda] [--width 64]

Prints a table; writes benchmarks/results/fewshot_hyper.json. To compare another
learner, add it to LEARNERS.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from meta_timing import interleaved_times, make_episodes, memory_in_subprocesses, peak_memory

# name: (registered method, its model section beyond the Conv-4 width). The width's
# field name differs by method, so `model_section` adds it.
LEARNERS = {
    "protonet": ("protonet", {}),
    "maml (1 step, 2nd order)": ("maml", {"n_way": 5, "inner_steps": 1, "inner_lr": 0.4}),
    "maml (5 steps, 2nd order)": ("maml", {"n_way": 5, "inner_steps": 5, "inner_lr": 0.1}),
    "hypernet_fewshot": ("hypernet_fewshot", {"residual": True}),
    "hypernet_fewshot + block": ("hypernet_fewshot", {"residual": True, "generate_block": True}),
    "hyperproto": ("hyperproto", {"residual": True}),
    "hypermaml (3 steps)": ("hypermaml", {"inner_steps": 3}),
    "hypermaml learned (3 steps)": ("hypermaml", {"inner_steps": 3, "update": "learned"}),
    # from images through its frozen Conv-4; the pipeline meta-trains it on features
    # encoded once, which costs far less per iteration
    "leo (5 + 5 steps)": ("leo", {}),
}
BASELINE = "protonet"


def model_section(method: str, extra: dict, width: int) -> dict:
    """The learner's model section: its Conv-4 width under the name its schema uses."""
    key = "width" if method == "maml" else "hidden"
    return {key: width, **extra}


def make_step(name: str, args: argparse.Namespace, device: torch.device):
    """A zero-argument meta-iteration of learner `name` (fresh, seeded weights)."""
    from hypermeta.config import validate_section
    from hypermeta.methods import get_method

    method, extra = LEARNERS[name]
    spec = get_method(method)
    config = validate_section(spec.model_config, model_section(method, extra, args.width), "model")
    torch.manual_seed(0)
    learner = spec.build(config, {"image_shape": [1, 28, 28]}).to(device).train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.001)
    episodes = make_episodes(args.meta_batch, 5, 1, 15, device)

    def step() -> None:
        learner.meta_step(episodes, optimizer)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 timed rounds, not 5")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="Conv-4 filters per block")
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

    names = args.only or list(LEARNERS)
    settings = ["--device", args.device, "--meta-batch", str(args.meta_batch)]
    settings += ["--width", str(args.width), "--threads", str(args.threads)]
    memory = memory_in_subprocesses(__file__, names, settings)
    times = interleaved_times(make_step, names, args)

    rows = [
        {
            "learner": name,
            "method": LEARNERS[name][0],
            "seconds_per_iteration": statistics.median(times[name]),
            "seconds_all": times[name],
            "peak_memory_mb": memory[name],
        }
        for name in names
    ]
    base = next((r["seconds_per_iteration"] for r in rows if r["learner"] == BASELINE), None)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu×{args.threads}"
    print(
        f"\nfew-shot learners, 5-way 1-shot 28×28, 15 queries, Conv-4 width {args.width}, "
        f"meta-batch {args.meta_batch}, {device_name}, median of {args.iterations} rounds"
    )
    print(f"{'learner':<30}{'s / meta-iter':>15}{'peak MB':>10}{'vs ' + BASELINE:>14}")
    for row in rows:
        ratio = row["seconds_per_iteration"] / base if base else None
        row[f"time_vs_{BASELINE}"] = ratio
        shown = f"{ratio:.2f}×" if ratio else "-"
        print(
            f"{row['learner']:<30}{row['seconds_per_iteration']:>15.3f}"
            f"{row['peak_memory_mb']:>10.0f}{shown:>14}"
        )
    out = Path(__file__).parent / "results" / "fewshot_hyper.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    setting = {k: v for k, v in vars(args).items() if k != "memory_of"}
    out.write_text(json.dumps({"setting": setting, "device": device_name, "rows": rows}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
