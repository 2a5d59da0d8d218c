"""Speed and memory of the sequence learners (MANN and its LSTM baseline, Santoro et al.
2016) against ProtoNet and MAML at the same episode size: seconds per meta-training
episode (forward, backward, one Adam step) and peak memory of one meta-iteration.

Episode size: 50 Omniglot-sized images (1×28×28) per episode. MANN and the LSTM read a
sequence of 5 classes × 10 samples (their `meta_step`: the support set of a 5-way
10-shot episode, shuffled, loss at every step); ProtoNet and MAML take 5-way 5-shot
episodes with 5 queries per class (50 images, Conv-4 of `--width` filters). MANN in the
paper's size (128 × 40 memory, 4 read heads, 200 controller units, 20×20 inputs) and in
the quick profile's. Times: the learners take turns in one process, round after round;
peak memory: one meta-iteration per learner in a fresh subprocess (CUDA
max_memory_allocated on a GPU, the rise of the process's peak RSS on a CPU).

    python benchmarks/bench_sequence.py [--quick] [--device cpu|cuda] [--meta-batch 16]

Prints a table; writes benchmarks/results/sequence.json.
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

QUICK_MANN = {"controller": 64, "image_size": 10, "slots": 32, "slot_size": 16, "read_heads": 1}
# name: (registered method, its model section, (n_way, k_shot, queries) of its episodes).
LEARNERS = {
    "mann (paper size)": ("mann", {}, (5, 10, 1)),
    "mann_lstm (paper size)": ("mann_lstm", {}, (5, 10, 1)),
    "mann (quick profile)": ("mann", QUICK_MANN, (5, 10, 1)),
    "protonet": ("protonet", {"hidden": 64}, (5, 5, 5)),
    "maml (1 step, 2nd order)": ("maml", {"n_way": 5, "width": 64, "inner_steps": 1}, (5, 5, 5)),
}
BASELINE = "protonet"


def make_step(name: str, args: argparse.Namespace, device: torch.device):
    """A zero-argument meta-iteration of learner `name` (fresh, seeded weights)."""
    method, section, (n_way, k_shot, queries) = LEARNERS[name]
    learner = build_learner(method, section, device)
    learner.on_iteration(0, 1)
    episodes = make_episodes(args.meta_batch, n_way, k_shot, queries, device)
    return meta_step(learner, episodes, device)


def main() -> None:
    args = parse_timing(timing_parser(__doc__, LEARNERS, meta_batch=16))
    if answered_memory_query(make_step, args):
        return

    names = args.only or list(LEARNERS)
    memory = memory_in_subprocesses(__file__, names)
    times = interleaved_times(make_step, names, args)
    rows = [
        {
            "learner": name,
            "method": LEARNERS[name][0],
            "seconds_per_episode": statistics.median(times[name]) / args.meta_batch,
            "seconds_all": times[name],
            "peak_memory_mb": memory[name],
        }
        for name in names
    ]
    base = next((r["seconds_per_episode"] for r in rows if r["learner"] == BASELINE), None)
    print(
        f"\nsequence learners vs ProtoNet and MAML, 50 images of 28×28 per episode, "
        f"meta-batch {args.meta_batch}, {device_label(args)}, median of {args.iterations} rounds"
    )
    print(f"{'learner':<28}{'s / episode':>13}{'peak MB':>10}{'vs ' + BASELINE:>14}")
    for row in rows:
        ratio = row["seconds_per_episode"] / base if base else None
        row[f"time_vs_{BASELINE}"] = ratio
        shown = f"{ratio:.2f}×" if ratio else "-"
        print(f"{row['learner']:<28}{row['seconds_per_episode']:>13.4f}"
              f"{row['peak_memory_mb']:>10.0f}{shown:>14}")  # fmt: skip
    write_results("sequence.json", args, rows)


if __name__ == "__main__":
    main()
