"""Figures of kind `regression`: meta-training curves and MAML's Figure 2 (the learner vs.
a network pretrained on all tasks and then fine-tuned, after 0, 1 and 10 gradient
steps); compare: MSE against fine-tuning steps for the group."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hypermeta.data.episodes import Episodes
from hypermeta.data.sine import SineTasks, evaluation_tasks, with_shots
from hypermeta.engine.base import StageContext
from hypermeta.engine.regression import RegressionEval, finetuner, load_pair
from hypermeta.methods.gradient.learner import GradientMetaLearner
from hypermeta.plots import register
from hypermeta.plots.base import Plotter
from hypermeta.viz import MARKERS, _save, distinct_colours, legend_below, pyplot, save_curves


class RegressionPlotter(Plotter):
    kind = "regression"

    def visualize(self, ctx: StageContext) -> list[Path]:
        exp = ctx.experiment
        cfg: RegressionEval = exp.eval
        learner, baseline, _ = load_pair(ctx)
        history = json.loads(ctx.history_path.read_text())
        paths = [
            save_curves(
                {exp.name: history},
                {"meta-training loss": ["train_loss", "baseline_train_loss"], "MSE": ["val_mse"]},
                ctx.plots_dir / "curves.png",
                f"{exp.name}: meta-training",
                x_label="meta-iterations",
            )
        ]
        tasks, episodes = evaluation_tasks(cfg.n_tasks, max(cfg.shots), cfg.n_query, cfg.seed)
        tuned = finetuner(baseline, learner, cfg.finetune_lr)
        for k in cfg.shots:
            paths.append(
                figure_two(
                    {exp.name: learner, "pretrained": tuned},
                    SineTasks(tasks.amplitude[:1], tasks.phase[:1]),
                    with_shots(episodes, k),
                    sorted(cfg.steps),
                    ctx.plots_dir / f"adaptation_k{k}.png",
                    f"{exp.name} vs pretrained baseline, K = {k} (MAML Fig. 2)",
                )
            )
        return paths

    def compare(self, contexts: list[StageContext], out_dir: Path, title: str) -> list[Path]:
        """MSE against fine-tuning steps, one panel per K: every experiment of the group
        and its pretrained baseline (dashed), from their metrics.json."""
        records = {
            ctx.experiment.name: json.loads((ctx.metrics_dir / "metrics.json").read_text())
            for ctx in contexts
            if (ctx.metrics_dir / "metrics.json").exists()
        }
        steps = {ctx.experiment.name: sorted(ctx.experiment.eval.steps) for ctx in contexts}
        if not records:
            return []
        shots = sorted({k for ctx in contexts for k in ctx.experiment.eval.shots})
        from matplotlib.ticker import FuncFormatter  # here: matplotlib loads only to draw

        figure, axes = pyplot().subplots(
            1, len(shots), figsize=(5 * len(shots), 3.8), squeeze=False
        )
        colours = dict(zip(records, distinct_colours(len(records)), strict=True))
        markers = {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(records)}
        for ax, k in zip(axes[0], shots, strict=True):
            for name, record in records.items():
                for prefix, style in (("", "-"), ("baseline_", "--")):
                    points = sorted(
                        (int(key.rsplit("step", 1)[1]), value)
                        for key, value in record.items()
                        if key.startswith(f"{prefix}mse_k{k}_step")
                    )
                    if points:
                        xs, ys = zip(*points, strict=True)
                        label = f"{name} pretrained baseline" if prefix else name
                        # evaluate keeps finite MSEs only: a missing step diverged
                        lost = [str(s) for s in steps[name] if s not in xs]
                        if lost:
                            label += f" (diverged after {', '.join(lost)} steps: MSE not finite)"
                        colour, marker = colours[name], markers[name]
                        ax.plot(xs, ys, style, color=colour, marker=marker, label=label)
            ax.set_title(f"K = {k}")
            ax.set_xlabel("gradient steps at meta-test")
            # a diverging learner's MSE spans many decades: a log axis keeps the rest readable
            ax.set_yscale("log")
            for axis_ticks in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis_ticks(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.5, not 5×10⁻¹
            ax.set_ylabel("MSE (log scale)")
            ax.grid(alpha=0.3, which="both")
            legend_below(ax)
        figure.suptitle(title)
        return [_save(figure, out_dir / "sine_mse_by_steps.png")]


DIVERGED = 10.0  # a curve reaching this many axis heights beyond the axis is called diverged


def off_axis_note(curve: torch.Tensor, low: float, high: float) -> tuple[str, bool]:
    """What the legend says of a prediction the clipped y axis does not show in full, and
    whether the prediction diverged."""
    if not curve.isfinite().all():
        return " — diverged (not finite, off the axis)", True
    beyond = torch.maximum(low - curve, curve - high).max().item()
    if beyond > DIVERGED * (high - low):
        return f" — diverged (reaches {curve[curve.abs().argmax()].item():.3g}, off the axis)", True
    return (" (partly off the axis)" if beyond > 0 else ""), False


def figure_two(
    models: dict[str, GradientMetaLearner],
    task: SineTasks,
    episodes: Episodes,
    steps: list[int],
    path: Path,
    title: str,
) -> Path:
    """One panel per model: the true sine, the K support points, and the prediction on a
    dense grid after each number of gradient steps. The y axis spans the ground truth
    and the support points: a prediction that leaves it is clipped and said to be."""
    grid = torch.linspace(-5, 5, 200).view(1, -1, 1)
    truth = task(grid).flatten()
    first = Episodes(episodes.support_x[:1], episodes.support_y[:1], grid, task(grid), 0)
    shown = torch.cat([truth, first.support_y.flatten()])
    margin = 0.5 * (shown.max() - shown.min()).item()  # room for a fair miss, not a divergence
    low, high = shown.min().item() - margin, shown.max().item() + margin
    figure, axes = pyplot().subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, (name, model) in zip(axes[0], models.items(), strict=True):
        with torch.no_grad():
            curves = model.query_predictions(first, max(steps), tuple(steps))[:, 0]
        ax.plot(grid.flatten(), truth, color="black", lw=2, label="ground truth")
        for s, curve in zip(steps, curves, strict=True):
            values = curve.flatten()
            note, diverged = off_axis_note(values, low, high)
            if diverged:  # only its points on the axis: its jumps would draw walls across it
                values = values.where((values >= low) & (values <= high), torch.nan)
            ax.plot(
                grid.flatten(),
                values,
                ls=":" if diverged else "--",
                label=f"after {s} steps{note}",
            )
        ax.scatter(
            first.support_x.flatten(),
            first.support_y.flatten(),
            marker="^",
            s=60,
            color="purple",
            zorder=3,
            label="support points",
        )
        ax.set_ylim(low, high)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        legend_below(ax)
    figure.suptitle(title)
    return _save(figure, path)


register(RegressionPlotter())
