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
import json
import statistics
from pathlib import Path

import torch
from meta_timing import interleaved_times, make_episodes, memory_in_subprocesses, peak_memory

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
    from hypermeta.methods import get_method

    spec = get_method("maml")
    vectorize, task_chunk, task_workers = VARIANTS[variant] or (False, None, None)
    config = spec.model_config(
        n_way=5,
        inner_steps=args.steps,
        inner_lr=0.4,
        vectorize=vectorize,
        task_chunk=task_chunk,
        task_workers=task_workers,
    )
    torch.manual_seed(0)
    learner = spec.build(config, {"image_shape": [1, 28, 28]}).to(device).train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.001)
    episodes = make_episodes(args.meta_batch, 5, 1, 15, device)

    def step() -> None:
        if variant == "higher, 1 thread":
            torch.set_num_threads(1)
            higher_step(learner, episodes, optimizer, args.steps, 0.4)
            torch.set_num_threads(args.threads)
        elif variant == "higher":
            higher_step(learner, episodes, optimizer, args.steps, 0.4)
        else:
            learner.meta_step(episodes, optimizer)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 timed rounds, not 5")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="inner steps")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iterations", type=int, default=None, help="timed rounds")
    parser.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)  # subprocess
    args = parser.parse_args()
    if args.iterations is None:
        args.iterations = 2 if args.quick else 5
    if args.memory_of:
        print(json.dumps({"peak_memory_mb": peak_memory(make_step, args.memory_of, args)}))
        return

    variants = list(VARIANTS)
    try:
        import higher  # noqa: F401
    except ImportError:
        print("higher is not installed (pip install higher==0.2.1): compared without it")
        variants = [variant for variant in variants if variant not in HIGHER]
    settings = ["--device", args.device, "--meta-batch", str(args.meta_batch)]
    settings += ["--steps", str(args.steps), "--threads", str(args.threads)]
    memory = memory_in_subprocesses(__file__, variants, settings)
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
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu×{args.threads}"
    print(
        f"\nMAML 5-way 1-shot 28×28 Conv-4, meta-batch {args.meta_batch}, {args.steps} inner "
        f"steps, second order, {device_name}, median of {args.iterations} interleaved rounds"
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
    out = Path(__file__).parent / "results" / "maml.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    setting = {k: v for k, v in vars(args).items() if k != "memory_of"}
    out.write_text(json.dumps({"setting": setting, "device": device_name, "rows": rows}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
