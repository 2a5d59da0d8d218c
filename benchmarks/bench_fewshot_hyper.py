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
import statistics

import torch
from meta_timing import (
    answered_memory_query,
    build_learner,
    device_label,
    interleaved_times,
    make_episodes,
    memory_in_subprocesses,
    meta_step,
    parse_timing,
    timing_parser,
    write_results,
)

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
    method, extra = LEARNERS[name]
    learner = build_learner(method, model_section(method, extra, args.width), device)
    return meta_step(learner, make_episodes(args.meta_batch, 5, 1, 15, device), device)


def main() -> None:
    parser = timing_parser(__doc__, LEARNERS, meta_batch=32)
    parser.add_argument("--width", type=int, default=64, help="Conv-4 filters per block")
    args = parse_timing(parser)
    if answered_memory_query(make_step, args):
        return

    names = args.only or list(LEARNERS)
    memory = memory_in_subprocesses(__file__, names)
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
    print(
        f"\nfew-shot learners, 5-way 1-shot 28×28, 15 queries, Conv-4 width {args.width}, "
        f"meta-batch {args.meta_batch}, {device_label(args)}, median of {args.iterations} rounds"
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
    write_results("fewshot_hyper.json", args, rows)


if __name__ == "__main__":
    main()
