"""What the visualize stage and the report draw: one module per engine kind, each
registering a `Plotter`; the registry imports them all on first use.

Plotting lives apart from the engines so that training and evaluation neither run nor
depend on it: their dvc.yaml fingerprints (hypermeta.sources) leave this package out,
and an edit to a plot reruns only the visualisations and the report."""

from __future__ import annotations

from pathlib import Path

from hypermeta.experiments import load_params, resolve
from hypermeta.plots.base import Plotter
from hypermeta.registry import Registry
from hypermeta.stages import child_run, stage_context

PLOTTERS: Registry[Plotter] = Registry("plotter kind", lambda plotter: plotter.kind, __name__)
register = PLOTTERS.register


def get_plotter(kind: str) -> Plotter:
    return PLOTTERS.lookup(kind)


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


__all__ = ["PLOTTERS", "Plotter", "get_plotter", "register", "visualize"]
