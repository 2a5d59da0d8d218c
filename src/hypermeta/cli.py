"""`hypermeta`: the stages the pipeline runs, plus tools for users.

Errors a user can fix end the program with one sentence on stderr and exit status 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from hypermeta.errors import HypermetaError

# The pipeline's stages (dvc.yaml), each a function of the same name in the module named
# here, imported only by its own stage: what a stage imports is what it runs, which its
# dvc.yaml fingerprint lists (hypermeta.sources). Those run per experiment take its name.
STAGES = {
    "download": "hypermeta.stages",
    "split": "hypermeta.stages",
    "train": "hypermeta.stages",
    "evaluate": "hypermeta.stages",
    "visualize": "hypermeta.plots",
    "report": "hypermeta.report",
}
PER_EXPERIMENT = {"train", "evaluate", "visualize"}
# User tools beyond the stages: each module exposes TOOL = (help, setup(subparser)).
TOOL_MODULES = {
    "fewshot": "hypermeta.fewshot_cli",
    "lm": "hypermeta.lm_cli",
    "paper-check": "hypermeta.paper_check",
}


def _stage(name: str) -> Callable[[argparse.Namespace], object]:
    def run(args: argparse.Namespace) -> object:
        function = getattr(importlib.import_module(STAGES[name]), name)
        return function(args.experiment) if name in PER_EXPERIMENT else function()

    return run


def _list_experiments(args: argparse.Namespace) -> None:
    # From params.yaml alone: resolving each experiment would import every method, and
    # torch with them, for a listing (seconds instead of a fraction of one).
    from hypermeta.config import merged_entry, read_params

    params = read_params()
    rows = [("experiment", "method", "dataset", "group")]
    for name in params.experiments:
        entry, _ = merged_entry(params, name)
        rows.append((name, entry["method"], entry["dataset"], entry["group"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"profile: {params.profile}")
    for row in rows:
        print(
            "  "
            + "  ".join(
                value.ljust(width) for value, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hypermeta", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in STAGES:
        sub = commands.add_parser(name, help=f"run the {name} stage")
        if name in PER_EXPERIMENT:
            sub.add_argument("experiment", help="an experiment named in params.yaml")
        sub.set_defaults(handler=_stage(name))
    listing = commands.add_parser(
        "experiments",
        help="list the experiments with their method, data and report group under the "
        "profile (their sections are checked by the stages, not here)",
    )
    listing.set_defaults(handler=_list_experiments)
    for name, module in TOOL_MODULES.items():
        help_text, setup = importlib.import_module(module).TOOL
        setup(commands.add_parser(name, help=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except HypermetaError as exc:
        print(f"hypermeta: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "hypermeta: interrupted; run the same command again to resume from its last "
            "checkpoint.",
            file=sys.stderr,
        )
        return 130
    return 0


def run_stage(argv: Sequence[str]) -> NoReturn:
    """Run one pipeline stage and end the process without the interpreter's teardown.

    By the time `main` returns, the stage's outputs are written (atomically) and its
    MLflow run is closed; unloading torch and mlflow's thousands of modules would then
    cost about 2 s of every pipeline job. An exception still ends the usual way. Under
    Snakemake the stage runs in a child of the invocation's stage server, which has
    imported torch already (hypermeta.stage_server), and this process waits for it."""
    from hypermeta.stage_server import run_in_server

    code = run_in_server()
    if code is None:
        code = main(argv)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
