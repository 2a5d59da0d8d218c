"""Speed and memory of MAML's inner loop: torch.func (vmap over tasks) vs a plain per-task
loop (same functional code, no vmap, backward per task) vs the same loop on task workers
(the learners' default for Conv-4 on a CPU: one thread per core, each taking a run of
the meta-batch's tasks with one intra-op thread) vs `higher` (optional: pip install
higher==0.2.1), run as usual (torch's intra-op threads) and with one intra-op thread
(its faster setting on a small CPU).

Setting: 5-way 1-shot Omniglot-sized inputs (1×28×28), Conv-4 with 64 filters, meta-batch
32, 15 queries per class, 5 inner steps, true second-order meta-gradient, one Adam step.
"vmap, chunks of 8" vmaps 8 tasks at a time and frees each chunk's graph (bounded memory).
Every variant runs the same target network (batch norm on batch statistics). Times: the
variants take turns in one process, round after round (a shared machine's load hits all
alike); peak memory: one meta-iteration per variant in a fresh subprocess (CUDA
max_memory_allocated on a GPU, the rise of the process's peak RSS on a CPU).

    python benchmarks/bench_maml.py [--quick] [--device cpu|cuda] [--meta-batch 32]

Prints a table; writes benchmarks/results/maml.json.
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
    synchronize,
    timing_parser,
    write_results,
)

# name: (vectorize, task_chunk, task_workers) of our learner (task_workers None: one per
# intra-op thread); "higher" is the reference
VARIANTS = {
    "torch.func vmap": (True, None, 1),
    "vmap, chunks of 8": (True, 8, 1),
    "per-task loop": (False, 1, 1),
    "task workers": (False, 1, None),
    "higher": None,
    "higher, 1 thread": None,
}
HIGHER = ("higher", "higher, 1 thread")


def higher_step(learner, episodes, optimizer, steps: int, inner_lr: float) -> None:
    """The usual `higher` recipe: one differentiable inner optimizer per task."""
    import higher

    inner_optimizer = torch.optim.SGD(learner.target.parameters(), lr=inner_lr)
    optimizer.zero_grad(set_to_none=True)
    tasks = len(episodes.support_x)
    for task in range(tasks):
        with higher.innerloop_ctx(learner.target, inner_optimizer, copy_initial_weights=False) as (
            fmodel,
            diffopt,
        ):
            for _ in range(steps):
                loss = torch.nn.functional.cross_entropy(
                    fmodel(episodes.support_x[task]), episodes.support_y[task]
                )
                diffopt.step(loss)
            query = torch.nn.functional.cross_entropy(
                fmodel(episodes.query_x[task]), episodes.query_y[task]
            )
            (query / tasks).backward()
    optimizer.step()


def make_step(variant: str, args: argparse.Namespace, device: torch.device):
    """A zero-argument meta-iteration of `variant` (fresh learner, same initial weights)."""
    vectorize, task_chunk, task_workers = VARIANTS[variant] or (False, None, None)
    section = {"n_way": 5, "inner_steps": args.steps, "inner_lr": 0.4, "vectorize": vectorize,
               "task_chunk": task_chunk, "task_workers": task_workers}  # fmt: skip
    learner = build_learner("maml", section, device)
    episodes = make_episodes(args.meta_batch, 5, 1, 15, device)
    if variant not in HIGHER:
        return meta_step(learner, episodes, device)
    optimizer = torch.optim.Adam(learner.train().parameters(), lr=0.001)
    threads = 1 if variant == "higher, 1 thread" else args.threads

    def step() -> None:
        torch.set_num_threads(threads)
        higher_step(learner, episodes, optimizer, args.steps, 0.4)
        torch.set_num_threads(args.threads)
        synchronize(device)

    return step


def main() -> None:
    parser = timing_parser(__doc__, VARIANTS, meta_batch=32)
    parser.add_argument("--steps", type=int, default=5, help="inner steps")
    args = parse_timing(parser)
    if answered_memory_query(make_step, args):
        return

    variants = args.only or list(VARIANTS)
    try:
        import higher  # noqa: F401
    except ImportError:
        print("higher is not installed (pip install higher==0.2.1): compared without it")
        variants = [variant for variant in variants if variant not in HIGHER]
    memory = memory_in_subprocesses(__file__, variants)
    times = interleaved_times(make_step, variants, args)

    rows = [
        {
            "variant": variant,
            "seconds_per_iteration": statistics.median(times[variant]),
            "seconds_all": times[variant],
            "peak_memory_mb": memory[variant],
        }
        for variant in variants
    ]
    higher_rows = [r for r in rows if r["variant"] in HIGHER]
    fastest_higher = min((r["seconds_per_iteration"] for r in higher_rows), default=None)
    print(
        f"\nMAML 5-way 1-shot 28×28 Conv-4, meta-batch {args.meta_batch}, {args.steps} inner "
        f"steps, second order, {device_label(args)}, median of {args.iterations} interleaved rounds"
    )
    print(f"{'variant':<20}{'s / meta-iter':>15}{'peak MB':>10}{'vs faster higher':>18}")
    for row in rows:
        ratio = fastest_higher / row["seconds_per_iteration"] if fastest_higher else None
        row["speedup_vs_faster_higher"] = ratio
        shown = f"{ratio:.2f}×" if ratio else "-"
        print(
            f"{row['variant']:<20}{row['seconds_per_iteration']:>15.3f}"
            f"{row['peak_memory_mb']:>10.0f}{shown:>18}"
        )
    write_results("maml.json", args, rows)


if __name__ == "__main__":
    main()
