"""Figures of kind `classification`: the featured weight's filters and learning curves."""

from __future__ import annotations

import json
from pathlib import Path

from hypermeta.engine.base import StageContext
from hypermeta.engine.classification import load_trained
from hypermeta.hyper import effective_parameters
from hypermeta.methods import get_method
from hypermeta.plots import register
from hypermeta.plots.base import Plotter
from hypermeta.viz import save_curves, save_filters


class ClassificationPlotter(Plotter):
    kind = "classification"

    def visualize(self, ctx: StageContext) -> list[Path]:
        exp = ctx.experiment
        model, saved = load_trained(ctx.model_path)
        paths = []
        featured = get_method(exp.method).featured_weight
        if featured:
            kernel = effective_parameters(model)[featured]
            paths.append(
                save_filters(
                    {f"{exp.name} {featured}": kernel},
                    ctx.plots_dir / "filters.png",
                    f"{exp.name}: {featured} filters",
                )
            )
        history = json.loads(ctx.history_path.read_text())
        paths.append(
            save_curves(
                {exp.name: history},
                {
                    "loss": ["train_loss", "val_loss"],
                    "accuracy": ["train_accuracy", "val_accuracy"],
                },
                ctx.plots_dir / "curves.png",
                f"{exp.name}: learning curves",
            )
        )
        return paths

    def compare(self, contexts: list[StageContext], out_dir: Path, title: str) -> list[Path]:
        kernels = {}
        for ctx in contexts:
            featured = get_method(ctx.experiment.method).featured_weight
            if featured:
                model, _ = load_trained(ctx.model_path)
                kernels[f"{ctx.experiment.name} {featured}"] = effective_parameters(model)[featured]
        paths = []
        if kernels:
            paths.append(save_filters(kernels, out_dir / "filters.png", f"{title}: filters"))
        histories = {
            ctx.experiment.name: json.loads(ctx.history_path.read_text()) for ctx in contexts
        }
        paths.append(
            save_curves(
                histories,
                {"validation loss": ["val_loss"], "validation accuracy": ["val_accuracy"]},
                out_dir / "curves.png",
                f"{title}: learning curves",
            )
        )
        return paths


register(ClassificationPlotter())
