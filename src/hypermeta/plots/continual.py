"""Figures of kind `continual`: the accuracy-matrix heatmap; compare: average accuracy
as tasks arrive."""

from __future__ import annotations

from pathlib import Path

import torch

from hypermeta.engine.base import StageContext
from hypermeta.engine.continual import load_trained
from hypermeta.engine.continual_accuracy import accuracy_as_tasks_arrive, mean_matrix
from hypermeta.plots import register
from hypermeta.plots.base import Plotter
from hypermeta.viz import MARKERS, _save, distinct_colours, legend_below, pyplot


def save_accuracy_matrix(matrix: torch.Tensor, path: Path, title: str) -> Path:
    """Heatmap of R[i, j] (row: tasks trained so far, column: task tested), in %."""
    tasks = len(matrix)
    figure, ax = pyplot().subplots(figsize=(1.0 + 0.55 * tasks, 0.8 + 0.5 * tasks))
    image = ax.imshow(100 * matrix, cmap="viridis", vmin=0, vmax=100)
    for i in range(tasks):
        for j in range(tasks):
            value = 100 * matrix[i, j].item()
            if value != value:  # NaN: task j not trained yet
                continue
            colour = "black" if value > 60 else "white"
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(tasks), [str(j + 1) for j in range(tasks)])
    ax.set_yticks(range(tasks), [str(i + 1) for i in range(tasks)])
    ax.set_xlabel("tested on task j")
    ax.set_ylabel("after training task i")
    figure.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_title(title, fontsize=9)
    return _save(figure, path)


def save_accuracy_as_tasks_arrive(curves: dict[str, list[float]], path: Path, title: str) -> Path:
    """One line per experiment: mean accuracy over the tasks seen so far, after each task."""
    figure, ax = pyplot().subplots(figsize=(6, 4))
    colours = distinct_colours(len(curves))
    for index, (name, values) in enumerate(curves.items()):
        ax.plot(
            range(1, len(values) + 1),
            [100 * v for v in values],
            color=colours[index],
            marker=MARKERS[index % len(MARKERS)],
            ms=4,
            label=name,
        )
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("average accuracy on tasks so far (%, task id given)")
    ax.grid(alpha=0.3)
    legend_below(ax)
    ax.set_title(title)
    return _save(figure, path)


class ContinualPlotter(Plotter):
    kind = "continual"

    def visualize(self, ctx: StageContext) -> list[Path]:
        exp = ctx.experiment
        saved = load_trained(ctx.model_path)
        seeds = len(saved["runs"])
        return [
            save_accuracy_matrix(
                mean_matrix(saved),
                ctx.plots_dir / "accuracy_matrix.png",
                f"{exp.name}: test accuracy on task j after training task i"
                + (f" (mean of {seeds} seeds)" if seeds > 1 else ""),
            )
        ]

    def compare(self, contexts: list[StageContext], out_dir: Path, title: str) -> list[Path]:
        curves = {}
        for ctx in contexts:
            if ctx.model_path.exists():
                curves[ctx.experiment.name] = accuracy_as_tasks_arrive(
                    mean_matrix(load_trained(ctx.model_path))
                )
        if not curves:
            return []
        return [
            save_accuracy_as_tasks_arrive(
                curves, out_dir / "average_accuracy_as_tasks_arrive.png", title
            )
        ]


register(ContinualPlotter())
