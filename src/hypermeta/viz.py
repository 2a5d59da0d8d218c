"""Figures people look at: generated and learned filters, learning curves."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from hypermeta.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@cache
def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend, imported on first use: stages that
    draw nothing (train, evaluate) skip its import (about 0.4 s of every job)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(figure)
    return Path(path)


def kernel_grid(kernel: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """An (out × in) mosaic of f×f filters, 1-pixel gaps; one symmetric scale so signs
    compare across filters."""
    n_out, n_in, kh, kw = kernel.shape
    tiles = kernel / kernel.abs().max().clamp_min(1e-12)
    padded = torch.nn.functional.pad(tiles, (pad, 0, pad, 0))  # gap above and left of each
    mosaic = padded.permute(0, 2, 1, 3).reshape(n_out * (kh + pad), n_in * (kw + pad))
    return torch.nn.functional.pad(mosaic, (0, pad, 0, pad))


def save_filters(kernels: dict[str, torch.Tensor], path: Path, title: str) -> Path:
    """Filters of one or more models side by side (rows: output, columns: input channels)."""
    figure, axes = pyplot().subplots(
        1, len(kernels), figsize=(4.2 * len(kernels), 4.6), squeeze=False
    )
    for ax, (name, kernel) in zip(axes[0], kernels.items(), strict=True):
        ax.imshow(kernel_grid(kernel.float().cpu()), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"{name}\n{tuple(kernel.shape)}", fontsize=10)
        ax.set_xlabel("input channel")
        ax.set_ylabel("output channel")
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(title)
    return _save(figure, path)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINE_STYLES = ("-", "--", ":", "-.")


def distinct_colours(count: int) -> list[tuple[float, ...]]:
    """`count` colours that stay apart: tab10 up to 10, tab20 up to 20, then a full
    colour wheel (markers tell neighbours apart there)."""
    if count <= 10:
        return [pyplot().get_cmap("tab10")(i) for i in range(count)]
    if count <= 20:
        return [pyplot().get_cmap("tab20")(i) for i in range(count)]
    return [pyplot().get_cmap("hsv")(i / count) for i in range(count)]


def legend_below(ax: Axes) -> None:
    """The legend under the axes, so it never hides a curve however many there are; two
    columns while the labels are short enough to stay within the panel's width."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        columns = 2 if len(handles) > 1 and max(map(len, labels)) <= 32 else 1
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            ncol=columns,
            fontsize=7,
            frameon=False,
        )


def save_curves(
    histories: dict[str, list[dict]],
    panels: dict[str, list[str]],
    path: Path,
    title: str,
    x_key: str = "epoch",
    x_label: str | None = None,
) -> Path:
    """One panel per entry of `panels` (title → history keys), a line per model × key,
    against the history key `x_key` (epochs, or meta-iterations for few-shot): one
    colour and marker per model, one line style per key, the legend under each panel."""
    figure, axes = pyplot().subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    colours = distinct_colours(len(histories))
    for ax, (panel, keys) in zip(axes[0], panels.items(), strict=True):
        for index, (name, history) in enumerate(histories.items()):
            for number, key in enumerate(keys):
                points = [(row[x_key], row[key]) for row in history if key in row]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(
                        xs,
                        ys,
                        color=colours[index],
                        ls=LINE_STYLES[number % len(LINE_STYLES)],
                        marker=MARKERS[index % len(MARKERS)],
                        ms=3,
                        label=f"{name} {key}",
                    )
        ax.set_title(panel)
        ax.set_xlabel(x_label or x_key.replace("_", " "))
        ax.grid(alpha=0.3)
        legend_below(ax)
    figure.suptitle(title)
    return _save(figure, path)


def save_episode(
    support: torch.Tensor, query: torch.Tensor, correct: torch.Tensor, path: Path, title: str
) -> Path:
    """One few-shot episode: a row per class, its K support images then its Q queries,
    each query framed green when classified right and red when wrong.

    support (N, K, 1, H, W), query (N, Q, 1, H, W) as displayable [0, 1] images;
    correct (N, Q) bool."""
    n, k = support.shape[:2]
    q = query.shape[1]
    figure, axes = pyplot().subplots(
        n, k + q, figsize=(0.8 * (k + q), 0.8 * n + 0.6), squeeze=False
    )
    for row in range(n):
        for col in range(k + q):
            ax = axes[row][col]
            image = support[row, col] if col < k else query[row, col - k]
            ax.imshow(image[0].cpu(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= k:
                colour = "tab:green" if correct[row, col - k] else "tab:red"
                for spine in ax.spines.values():
                    spine.set(color=colour, linewidth=2.5)
        axes[row][0].set_ylabel(f"class {row}", fontsize=8)
    axes[0][0].set_title("support", fontsize=9, loc="left")
    axes[0][k].set_title("queries", fontsize=9, loc="left")
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def save_head_rows(heads: dict[str, torch.Tensor], path: Path, title: str) -> Path:
    """Generated classification heads side by side: each an image of its (N, D) weight
    matrix, a row per class, one symmetric colour scale per head."""
    figure, axes = pyplot().subplots(1, len(heads), figsize=(4.2 * len(heads), 3.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], heads.items(), strict=True):
        rows = rows.float().cpu()
        scale = rows.abs().max().clamp_min(1e-12).item()
        ax.imshow(rows, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
        ax.set_title(f"{name}\n{tuple(rows.shape)}", fontsize=10)
        ax.set_xlabel("feature")
        ax.set_ylabel("class")
        ax.set_yticks(range(len(rows)))
    figure.suptitle(title, y=1.06)  # above the two-line panel titles
    return _save(figure, path)


def save_scatter(
    points: torch.Tensor, groups: list[str], path: Path, title: str, caption: str
) -> Path:
    """(E, 2) points, one colour and marker per group name (legend on the right),
    `caption` under the plot."""
    names = sorted(set(groups))
    colours = distinct_colours(len(names))
    figure, ax = pyplot().subplots(figsize=(6.4, 5.2))
    for index, name in enumerate(names):
        chosen = [i for i, group in enumerate(groups) if group == name]
        ax.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=10,
            color=colours[index],
            marker=MARKERS[index % len(MARKERS)],
            label=name,
        )
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    figure.text(0.5, -0.02, caption, ha="center", va="top", fontsize=7, wrap=True)
    return _save(figure, path)


def save_interval_curves(
    series: dict[str, list[tuple[float, float, float]]],
    path: Path,
    title: str,
    x_label: str,
    y_label: str,
    references: dict[str, list[tuple[float, float]]] | None = None,
) -> Path:
    """A line with 95% CI error bars per entry of `series` (name → (x, mean, half width)
    points), and a dashed line per entry of `references` (name → (x, value) points) on
    the same axes."""
    figure, ax = pyplot().subplots(figsize=(6.2, 4.2))
    colours = distinct_colours(len(series) + len(references or {}))
    for index, (name, points) in enumerate(series.items()):
        xs, means, halves = zip(*points, strict=True)
        marker = MARKERS[index % len(MARKERS)]
        ax.errorbar(xs, means, yerr=halves, color=colours[index], marker=marker, ms=4,
                    capsize=3, label=name)  # fmt: skip
    for index, (name, points) in enumerate((references or {}).items(), start=len(series)):
        xs, values = zip(*points, strict=True)
        ax.plot(xs, values, color=colours[index], ls="--", marker="x", label=name)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    legend_below(ax)
    return _save(figure, path)


def save_memory_trace(
    weights: dict[str, torch.Tensor], labels: list[int], path: Path, title: str
) -> Path:
    """Side by side, one image per entry of `weights` (name → (T, slots) weights of each
    step over the memory slots), a row per step named by its label."""
    figure, axes = pyplot().subplots(
        1, len(weights), figsize=(4.5 * len(weights), 0.12 * len(labels) + 2), squeeze=False
    )
    for ax, (name, rows) in zip(axes[0], weights.items(), strict=True):
        image = ax.imshow(rows.float().cpu(), cmap="viridis", aspect="auto", vmin=0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("memory slot")
        ax.set_ylabel("step (its label)")
        ax.set_yticks(range(len(labels)), [f"{t} ({y})" for t, y in enumerate(labels)], fontsize=5)
        figure.colorbar(image, ax=ax, fraction=0.046)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def save_attention_maps(
    maps: dict[str, torch.Tensor],
    rows: list[str],
    columns: list[str],
    images: torch.Tensor,
    path: Path,
    title: str,
    caption: str,
) -> Path:
    """Attention maps side by side, one per layer: (R, C) weights, row r's on column c,
    each on its own colour scale from 0. `rows` and `columns` name the steps; `images`
    (R, 1, H, W), displayable [0, 1], are drawn beside the first map's rows, and the
    first `len(columns) - 1` of them under the columns (the last column: no image)."""
    from matplotlib.colors import Normalize
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    count, (height, width) = len(maps), maps[next(iter(maps))].shape
    figure, axes = pyplot().subplots(
        1, count, figsize=(0.42 * width * count + 1.8 * count + 1, 0.42 * height + 1.8)
    )
    axes = [axes] if count == 1 else list(axes)

    def thumbnail(ax: Axes, image: torch.Tensor, at: tuple[float, float], offset) -> None:
        box = OffsetImage(image[0].cpu().numpy(), cmap="gray_r", norm=Normalize(0, 1), zoom=0.5)
        ax.add_artist(AnnotationBbox(box, at, xybox=offset, boxcoords="offset points",
                                     frameon=False, annotation_clip=False))  # fmt: skip

    for index, (ax, (name, weights)) in enumerate(zip(axes, maps.items(), strict=True)):
        weights = weights.float().cpu()
        shown = ax.imshow(weights, cmap="viridis", vmin=0, vmax=weights.max().item())
        figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(width), columns, rotation=90, fontsize=6)
        ax.set_yticks(range(height), rows if index == 0 else [""] * height, fontsize=6)
        for column in range(width - 1):
            thumbnail(ax, images[column], (column, height - 0.5), (0, -42))
        if index == 0:
            for row in range(height):
                thumbnail(ax, images[row], (-0.5, row), (-42, 0))
    figure.suptitle(title, fontsize=10)
    figure.text(0.5, -0.04, caption, ha="center", va="top", fontsize=7, wrap=True)
    return _save(figure, path)


def tiled(images: torch.Tensor, columns: int) -> torch.Tensor:
    """(N, 1, H, W) → one (rows·H, columns·W) picture, white gaps between cells."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = torch.ones(rows * (h + 1), columns * (w + 1))
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image[0]
    return canvas


def save_pictures(panels: dict[str, torch.Tensor], path: Path, title: str) -> Path:
    figure, axes = pyplot().subplots(1, len(panels), figsize=(4 * len(panels), 4.4), squeeze=False)
    for ax, (name, picture) in zip(axes[0], panels.items(), strict=True):
        ax.imshow(picture.cpu(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    figure.suptitle(title)
    return _save(figure, path)
