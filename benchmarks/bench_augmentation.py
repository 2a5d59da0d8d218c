"""The added cost of support-set augmentation per test episode (engine/augmentation.py):
CPU ms per episode (one thread) of the few-shot engine's evaluation with and without
`eval.augment`, for the learners and generator params.yaml pairs (at their architectures
under the chosen profile; untrained weights, as speed does not depend on them), on random
drawings.

    python benchmarks/bench_augmentation.py [--profile quick|paper] [--episodes 50]

ProtoNet evaluates as the engine does, on the split encoded once (its drawings alone are
encoded per episode when augmented); MAML adapts on each episode's images. Prints a table;
writes benchmarks/results/augmentation.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hypermeta.data.episodes import EpisodeIndex, EpisodeSampler, EpisodeSetting
from hypermeta.engine.augmentation import SupportAugmenter
from hypermeta.engine.fewshot import encoded_split, episode_accuracies
from hypermeta.experiments import load_params, resolve
from hypermeta.methods import get_method
from hypermeta.nn.inference import inference_copy

LEARNERS = ("protonet_omniglot", "maml_omniglot", "maml_omniglot_20way")
INFO = {"image_shape": [1, 28, 28], "mean": 0.08, "std": 0.27}


def ms_per_episode(learner, sampler, setting, index, regime, augment) -> float:
    features = encoded_split(learner, sampler, regime, False)
    warm_up = EpisodeIndex(index.classes[:2], index.drawings[:2])
    episode_accuracies(learner, sampler, setting, warm_up, regime, 25, False, features,
                       encode_split=False, augment=augment)  # fmt: skip
    began = time.process_time()  # CPU time: robust to other jobs on a shared machine
    episode_accuracies(learner, sampler, setting, index, regime, 25, False, features,
                       encode_split=False, augment=augment)  # fmt: skip
    return 1000 * (time.process_time() - began) / len(index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--episodes", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    params = load_params(profile=args.profile)
    images = torch.randint(0, 256, (40, 20, 1, 28, 28), dtype=torch.uint8)
    sampler = EpisodeSampler(images, INFO["mean"], INFO["std"])
    rows = []
    for name in LEARNERS:
        exp = resolve(params, name, args.profile)
        learner = get_method(exp.method).build(exp.model, INFO).eval()
        cfg = exp.eval.augment
        generator_exp = resolve(params, cfg.model, args.profile)
        model = get_method(generator_exp.method).build(generator_exp.model, INFO).eval()
        with learner.meta_test(exp.eval.batchnorm):
            encoder = learner.image_encoder()
            encoder = inference_copy(encoder) if encoder is not None else None
        augment = SupportAugmenter(model, cfg.samples, 0, INFO["mean"], INFO["std"], encoder)
        for item in cfg.settings:
            setting = EpisodeSetting(item.n_way, item.k_shot, exp.eval.query)
            index = sampler.fixed_episodes(setting, args.episodes, 0)
            plain = ms_per_episode(learner, sampler, setting, index, exp.eval.batchnorm, None)
            augmented = ms_per_episode(
                learner, sampler, setting, index, exp.eval.batchnorm, augment
            )
            rows.append({"experiment": name, "setting": setting.name, "generator": cfg.model,
                         "samples": cfg.samples, "cpu_ms_per_episode": plain,
                         "cpu_ms_per_episode_augmented": augmented})  # fmt: skip
            print(f"{name:22s} {setting.name:12s} m={cfg.samples}  CPU ms/episode: without "
                  f"{plain:8.1f}  with {augmented:8.1f}  (+{augmented - plain:.1f})",
                  flush=True)  # fmt: skip
    out = Path(__file__).parent / "results" / "augmentation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"profile": args.profile, "threads": torch.get_num_threads(),
                               "episodes": args.episodes, "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
