"""Images generated per second by each generative model (engine kind `generative`), at
its params.yaml architecture under the chosen profile: prior samples in batches of
`--batch` (DAGAN, which has no prior: one sample of each of `--batch` binary drawings,
encoding included), no gradients, eval mode (speed does not depend on the trained weights).

    python benchmarks/bench_generative.py [--profile quick|paper] [--device cpu|cuda]

Prints a table; writes benchmarks/results/generative.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hypermeta.engine.generative import generated_images
from hypermeta.experiments import load_params, resolve
from hypermeta.methods import get_method
from hypermeta.methods.generative_base import GenerativeModel

EXPERIMENTS = ("vae_omniglot", "gan_omniglot", "dcgan_omniglot", "dagan_omniglot")


def images_per_second(model: GenerativeModel, batch: int, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    conditions = (torch.rand(batch, 1, 28, 28, generator=generator) < 0.2).float().to(device)
    with torch.no_grad():
        generated_images(model, batch, conditions, generator)  # warm-up
        began = time.perf_counter()
        for _ in range(repeats):
            generated_images(model, batch, conditions, generator)
        if next(model.parameters()).is_cuda:
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    params = load_params(profile=args.profile)
    results = {}
    for name in EXPERIMENTS:
        exp = resolve(params, name, args.profile)
        model = get_method(exp.method).build(exp.model, {"image_shape": [1, 28, 28]})
        model = model.to(args.device).eval()
        results[name] = images_per_second(model, args.batch, args.repeats)
        print(f"{name:16s} {results[name]:12,.0f} images/s ({args.profile}, {args.device})")
    out = Path(__file__).parent / "results" / "generative.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"profile": args.profile, "device": args.device, **results}))


if __name__ == "__main__":
    main()
