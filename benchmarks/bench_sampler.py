"""Episodes per second of the few-shot sampler, so data is never the bottleneck.

    python benchmarks/bench_sampler.py [--quick]

Side by side, on omniglot_small's meta-training split: our batched sampler (index
tensors + one gather per meta-batch), a per-image Python loop drawing the same episodes
(what the batched sampler avoids), and, for scale, a ProtoNet Conv-4 meta-step's cost per
episode of the same shape. Writes benchmarks/results/sampler.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from hypermeta.config import SplitConfig
from hypermeta.data.download import MIRROR_ENV, download
from hypermeta.data.episodes import Episodes, EpisodeSampler, EpisodeSetting, seeded_generator
from hypermeta.data.prepare import load_manifest, load_split, prepare
from hypermeta.methods.protonet import ProtoNetConfig
from hypermeta.methods.protonet import build as build_protonet

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sampler.json"
STEP_EPISODES = 2


def omniglot_small() -> Path:
    prepared = ROOT / "data" / "prepared" / "omniglot_small"
    if (prepared / "train.pt").exists():
        return prepared
    scratch = Path(tempfile.mkdtemp(prefix="bench_sampler_"))
    mirror = os.environ.get(MIRROR_ENV) or str(ROOT / ".." / "shared" / "data")
    download("omniglot_small", scratch / "raw", mirror)
    prepare("omniglot_small", scratch / "raw", scratch / "prepared", SplitConfig())
    return scratch / "prepared" / "omniglot_small"


def per_image_loop(sampler: EpisodeSampler, setting: EpisodeSetting, count: int, generator):
    """The same episodes, built image by image in Python."""
    index = sampler.draw(setting, count, generator)
    support, query = [], []
    for classes, drawings in zip(index.classes.tolist(), index.drawings.tolist(), strict=True):
        for c, row in zip(classes, drawings, strict=True):
            for position, d in enumerate(row):
                image = (sampler.images[c, d].float() / 255 - sampler.mean) / sampler.std
                (support if position < setting.k_shot else query).append(image)
    n, k, q = setting.n_way, setting.k_shot, setting.query
    return torch.stack(support).view(count, n * k, 1, 28, 28), torch.stack(query).view(
        count, n * q, 1, 28, 28
    )


def timed(function, repeats: int) -> float:
    function()  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - began) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 3 if args.quick else 20
    data_dir = omniglot_small()
    info = load_manifest(data_dir)
    sampler = EpisodeSampler(load_split(data_dir, "train")["images"], info["mean"], info["std"])
    learner = build_protonet(ProtoNetConfig(), info)
    optimizer = torch.optim.Adam(learner.parameters())
    meta_batch = 32
    rows = []
    for setting in (EpisodeSetting(5, 1, 15), EpisodeSetting(20, 5, 15)):
        g = seeded_generator("bench", 0)
        batched = timed(lambda s=setting, g=g: sampler.sample(s, meta_batch, g), repeats)
        looped = timed(lambda s=setting, g=g: per_image_loop(sampler, s, meta_batch, g), 1)
        # Conv-4 cost per episode, timed on a few episodes (a whole meta-batch of 20-way
        # 5-shot takes minutes on a shared CPU and would only scale linearly).
        few: Episodes = sampler.sample(setting, STEP_EPISODES, g)
        step = timed(lambda e=few: learner.meta_step(e, optimizer), 1) / STEP_EPISODES
        rows.append(
            {
                "setting": setting.name,
                "meta_batch": meta_batch,
                "batched_episodes_per_s": meta_batch / batched,
                "per_image_loop_episodes_per_s": meta_batch / looped,
                "speedup": looped / batched,
                "protonet_step_s_per_episode": step,
                "sampling_share_of_step": (batched / meta_batch) / (batched / meta_batch + step),
            }
        )
    print(f"{'setting':14s}{'batched ep/s':>14s}{'loop ep/s':>12s}{'speedup':>9s}"
          f"{'step s/episode':>15s}{'sampling share':>16s}")  # fmt: skip
    for r in rows:
        print(
            f"{r['setting']:14s}{r['batched_episodes_per_s']:14.0f}"
            f"{r['per_image_loop_episodes_per_s']:12.0f}{r['speedup']:9.1f}"
            f"{r['protonet_step_s_per_episode']:15.3f}{r['sampling_share_of_step']:16.2%}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "device": "cpu",
                "threads": 1,
                "machine": platform.processor() or platform.machine(),
                "repeats": repeats,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
