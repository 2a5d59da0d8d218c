"""What the visualize stage and the report draw: one module per engine kind, each
registering a `Plotter`; importing the package imports them all.

Plotting lives apart from the engines so that training and evaluation neither run nor
depend on it: their dvc.yaml fingerprints (hypermeta.sources) leave this package out,
and an edit to a plot reruns only the visualisations and the report."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from hypermeta.config import load_params, resolve
from hypermeta.errors import HypermetaError
from hypermeta.plots.base import Plotter
from hypermeta.stages import child_run, stage_context

PLOTTERS: dict[str, Plotter] = {}


def register(plotter: Plotter) -> Plotter:
    if plotter.kind in PLOTTERS:
        raise ValueError(f"plotter for kind {plotter.kind!r} registered twice")
    PLOTTERS[plotter.kind] = plotter
    return plotter


def get_plotter(kind: str) -> Plotter:
    if kind not in PLOTTERS:
        raise HypermetaError(f"no plotter for kind {kind!r}; known kinds are {sorted(PLOTTERS)}.")
    return PLOTTERS[kind]


def visualize(name: str) -> list[Path]:
    """The visualize stage of experiment `name` (dvc.yaml)."""
    params = load_params()
    exp = resolve(params, name)
    with child_run(params, "visualize", exp) as tracker:
        ctx = stage_context(exp, tracker)
        paths = get_plotter(exp.kind).visualize(ctx)
        for path in paths:
            tracker.log_artifact(path, "plots")
        return paths


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PLOTTERS", "Plotter", "get_plotter", "register", "visualize"]
