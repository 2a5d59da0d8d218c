"""Speed of the metric-based few-shot learners side by side: episodes per second at
meta-test (each image encoded once per episode, and, where the learner allows, the split
encoded once and the episodes gathered from its features, as the evaluator does) and
seconds per meta-training episode (forward, backward, one Adam step).

Setting: Omniglot-sized inputs (1×28×28), 15 queries per class, a synthetic split of
`--classes` classes of 20 drawings, each learner at width `--width` in its own
architecture (Conv-4; Sung's encoder for the Relation Network). Meta-test runs the
engine's own `episode_accuracies` in the running-statistics batch-norm regime (the one
in which an embedding depends on its image alone); meta-training times its `meta_step`
on 5-way 1-shot episodes, the learners taking turns round after round (meta_timing.py).

    python benchmarks/bench_metric.py [--quick] [--device cpu|cuda] [--width 64]

Prints a table; writes benchmarks/results/metric.json. A learner whose method is not
registered is skipped, and said so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from meta_timing import (
    build_learner,
    device_label,
    interleaved_times,
    meta_step,
    parse_timing,
    registered,
    synchronize,
    timing_parser,
    write_results,
)

from hypermeta.data.episodes import EpisodeSampler, EpisodeSetting, seeded_generator
from hypermeta.engine.fewshot import encoded_split, episode_accuracies

# name: (registered method, its model section beyond the width `hidden`).
LEARNERS = {
    "protonet": ("protonet", {}),
    "matching": ("matching", {}),
    "matching + fce": ("matching", {"fce": True}),
    "relation": ("relation", {}),
    "siamese": ("siamese", {}),
}
TEST_SETTINGS = (EpisodeSetting(5, 1, 15), EpisodeSetting(20, 5, 15))
TRAIN_SETTING = EpisodeSetting(5, 1, 15)


def synthetic_split(classes: int, device: torch.device) -> EpisodeSampler:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes, 20, 1, 28, 28), dtype=torch.uint8, generator=generator)
    return EpisodeSampler(images, mean=0.1, std=0.3, device=device)


def metric_learner(name: str, width: int, device: torch.device) -> torch.nn.Module:
    method, extra = LEARNERS[name]
    return build_learner(method, {"hidden": width, **extra}, device)


def meta_test_speed(name: str, args: argparse.Namespace, sampler: EpisodeSampler) -> dict:
    """Episodes per second per setting, per episode and (where allowed) from cached features."""
    device = sampler.images.device
    learner = metric_learner(name, args.width, device)
    began = time.perf_counter()
    features = encoded_split(learner, sampler, "running_stats", amp=False)
    synchronize(device)
    row = {"split_encoding_seconds": time.perf_counter() - began if features else None}
    for setting in TEST_SETTINGS:
        index = sampler.fixed_episodes(setting, args.episodes, seed=0)
        ways = [("per_episode", None)] + ([("cached", features)] if features else [])
        for how, cached in ways:
            warm_up = index.chunks(1)[0]  # allocator, kernels: not timed
            episode_accuracies(learner, sampler, setting, warm_up, "running_stats", 25, False,
                               cached, encode_split=False)  # fmt: skip
            began = time.perf_counter()
            episode_accuracies(learner, sampler, setting, index, "running_stats", 25, False,
                               cached, encode_split=False)  # fmt: skip
            synchronize(device)
            row[f"{how}_episodes_per_second_{setting.name}"] = args.episodes / (
                time.perf_counter() - began
            )
    return row


def make_step(name: str, args: argparse.Namespace, device: torch.device):
    """A zero-argument meta-training iteration of `args.meta_batch` episodes."""
    sampler = synthetic_split(args.classes, device)
    episodes = sampler.sample(TRAIN_SETTING, args.meta_batch, seeded_generator("bench", 0))
    return meta_step(metric_learner(name, args.width, device), episodes, device)


def main() -> None:
    parser = timing_parser(__doc__, LEARNERS, meta_batch=1, rounds=(3, 10))
    parser.add_argument("--width", type=int, default=64, help="filters per conv block")
    parser.add_argument("--classes", type=int, default=200, help="classes of the test split")
    parser.add_argument("--episodes", type=int, default=None, help="meta-test episodes")
    args = parse_timing(parser)
    args.episodes = args.episodes or (25 if args.quick else 100)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    names = registered(args.only or list(LEARNERS), lambda name: LEARNERS[name][0])
    sampler = synthetic_split(args.classes, device)
    rows = [{"learner": name, **meta_test_speed(name, args, sampler)} for name in names]
    times = interleaved_times(make_step, names, args)
    for row in rows:
        row["train_seconds_per_episode"] = statistics.median(times[row["learner"]]) / (
            args.meta_batch
        )

    print(
        f"\nmetric learners, 28×28, width {args.width}, 15 queries, {args.episodes} test "
        f"episodes over {args.classes} classes, {device_label(args)}; episodes / s at meta-test "
        f"(per episode | split encoded once), training s / episode ({TRAIN_SETTING.name}, "
        f"median of {args.iterations} rounds)"
    )
    columns = [f"{s.name}" for s in TEST_SETTINGS]
    print(f"{'learner':<16}" + "".join(f"{c:>22}" for c in columns) + f"{'encode split s':>16}"
          f"{'train s / ep':>14}")  # fmt: skip
    for row in rows:
        cells = []
        for setting in TEST_SETTINGS:
            per = row[f"per_episode_episodes_per_second_{setting.name}"]
            cached = row.get(f"cached_episodes_per_second_{setting.name}")
            cells.append(f"{per:.1f} | {cached:.1f}" if cached else f"{per:.1f} | -")
        encoding = row["split_encoding_seconds"]
        print(
            f"{row['learner']:<16}" + "".join(f"{c:>22}" for c in cells)
            + f"{(f'{encoding:.2f}' if encoding is not None else '-'):>16}"
            + f"{row['train_seconds_per_episode']:>14.4f}"
        )  # fmt: skip
    write_results("metric.json", args, rows)


if __name__ == "__main__":
    main()
