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
    registered,
    timing_parser,
    write_results,
)

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
    learner = build_learner(LEARNERS[name][0], model_section(name, args.inner_steps), device)
    return meta_step(learner, make_episodes(args.meta_batch, N_WAY, K_SHOT, QUERY, device), device)


def main() -> None:
    parser = timing_parser(__doc__, LEARNERS, meta_batch=4)
    parser.add_argument("--inner-steps", type=int, default=5, help="MAML's and the LSTM's")
    args = parse_timing(parser)
    if answered_memory_query(make_step, args):
        return

    names = registered(args.only or list(LEARNERS), lambda name: LEARNERS[name][0])
    memory = memory_in_subprocesses(__file__, names)
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
    print(
        f"\n{N_WAY}-way {K_SHOT}-shot 28×28, {QUERY} queries per class, meta-batch "
        f"{args.meta_batch}, {args.inner_steps} inner steps (MAML, LSTM meta-learner), "
        f"{device_label(args)}, median of {args.iterations} interleaved rounds"
    )
    fastest = min(row["seconds_per_episode"] for row in rows)
    print(f"{'learner':<20}{'ms / episode':>14}{'vs fastest':>12}{'peak MB':>10}")
    for row in rows:
        print(
            f"{row['learner']:<20}{1000 * row['seconds_per_episode']:>14.1f}"
            f"{row['seconds_per_episode'] / fastest:>11.1f}×{row['peak_memory_mb']:>10.0f}"
        )
    write_results("model_based.json", args, rows)


if __name__ == "__main__":
    main()
