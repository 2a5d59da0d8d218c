"""Figures of kind `generative`: training curves, a grid of prior samples, the
interpolation between two meta-train characters (through the model's codes: a VAE's
posterior means, a GAN's projected z), and each of 16 samples beside its nearest
meta-train drawing (squared pixel distance), so that memorisation would show, and for a
model that conditions on a drawing (VAE, DAGAN) rows of a test-alphabet drawing and the
new drawings of its class it makes (what support-set augmentation adds). A DAGAN has no
prior: its grid is of one sample from each of 64 meta-train drawings (first drawing of
each class). compare: the group's sample grids side by side."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hypermeta.data.episodes import seeded_generator
from hypermeta.engine.base import StageContext
from hypermeta.engine.generative import drawings, generated_images, load_generative
from hypermeta.methods.generative_base import GenerativeModel, binarised
from hypermeta.plots import register
from hypermeta.plots.base import Plotter
from hypermeta.viz import save_curves, save_pictures, tiled

GRID = 8  # samples per side of the sample grid
NEIGHBOURS = 16


class GenerativePlotter(Plotter):
    kind = "generative"

    def visualize(self, ctx: StageContext) -> list[Path]:
        exp = ctx.experiment
        model, _ = load_generative(ctx.model_path)
        history = json.loads(ctx.history_path.read_text())
        losses = sorted({key[4:] for row in history for key in row if key.startswith("val_")})
        paths = [
            save_curves(
                {exp.name: history},
                {loss: [f"train_{loss}", f"val_{loss}"] for loss in losses},
                ctx.plots_dir / "curves.png",
                f"{exp.name}: training",
                x_label="iterations",
            )
        ]
        where = f"experiments.{exp.name}"
        train = binarised(drawings(ctx.data_dir, "train", where)[:, 0])
        generator = seeded_generator("figures", exp.eval.seed)
        with torch.no_grad():
            samples = generated_images(model, GRID * GRID, train, generator)
        paths.append(
            save_pictures(
                {samples_title(model): tiled(samples, GRID)},
                ctx.plots_dir / "samples.png",
                f"{exp.name}: samples",
            )
        )
        ends = train[[0, len(train) // 2]]
        line = model.interpolate(ends[:1], ends[1:], 10).detach()
        paths.append(
            save_pictures(
                {"": tiled(torch.cat([ends[:1], line, ends[1:]]), 12)},
                ctx.plots_dir / "interpolation.png",
                f"{exp.name}: two meta-train characters (ends) and the decoded line between "
                "their codes",
            )
        )
        shown = samples[:NEIGHBOURS]
        distances = torch.cdist(shown.flatten(1), train.flatten(1))
        nearest = train[distances.argmin(1)]
        pairs = torch.stack([shown, nearest], 1).flatten(0, 1)
        paths.append(
            save_pictures(
                {"sample | nearest meta-train drawing": tiled(pairs, 8)},
                ctx.plots_dir / "nearest.png",
                f"{exp.name}: samples beside their nearest training drawings "
                "(first drawing of each class)",
            )
        )
        test = binarised(drawings(ctx.data_dir, "test", where)[:, 0])
        sources = test[torch.randperm(len(test), generator=generator)[:GRID]]
        with torch.no_grad():
            like = model.samples_like(sources, GRID - 1, generator)
        if like is not None:
            rows = torch.cat([sources.unsqueeze(1), like], 1).flatten(0, 1)
            paths.append(
                save_pictures(
                    {"source | samples like it": tiled(rows, GRID)},
                    ctx.plots_dir / "samples_like.png",
                    f"{exp.name}: new drawings of test-alphabet characters (augmentation)",
                )
            )
        return paths

    def compare(self, contexts: list[StageContext], out_dir: Path, title: str) -> list[Path]:
        panels = {}
        for ctx in contexts:
            if ctx.model_path.exists():
                model, _ = load_generative(ctx.model_path)
                where = f"experiments.{ctx.experiment.name}"
                train = binarised(drawings(ctx.data_dir, "train", where)[:, 0])
                generator = seeded_generator("figures", 0)
                with torch.no_grad():
                    samples = generated_images(model, GRID * GRID, train, generator)
                panels[ctx.experiment.name] = tiled(samples, GRID)
        if not panels:
            return []
        return [save_pictures(panels, out_dir / "samples.png", f"{title}: samples")]


def samples_title(model: GenerativeModel) -> str:
    if model.needs_condition:
        return "samples, each of a meta-train drawing"
    return "prior samples"


register(GenerativePlotter())
