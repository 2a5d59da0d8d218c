"""`hypermeta paper-check EXPERIMENT...`: run experiments at their paper profile through
the pipeline's own stages and keep each finished run as a record under `results/`.

The runs happen in a workspace of their own, `.hypermeta/paper/` (git-ignored), so the
project's quick outputs and DVC state stay as they are: a params.yaml holding the named
experiments under the paper profile (`--set` overrides there; a run with any that
changes the paper's scale or protocol is recorded as partial), the code of the commit
being run (a `git archive` snapshot: edits made while a run trains do not leak into its
later stages), and the stages' outputs.
The stages log to the project's MLflow store under one parent run per invocation. A
killed run resumes from its checkpoint when the same command is run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from hypermeta.config import Experiment, Params, load_raw, read_params
from hypermeta.dag import write_needs
from hypermeta.data.download import mirror_location
from hypermeta.errors import HypermetaError
from hypermeta.paths import METRICS, MODELS, PREPARED, repo_root
from hypermeta.results import PaperRecord, PublishedComparison, write_record
from hypermeta.tracking import PARENT_ENV, URI_ENV, project_store_uri, start_pipeline_run

WORKSPACE = Path(".hypermeta/paper")
PROFILE = "paper"
SECTIONS = ("model", "train", "eval", "resources")  # what --set may change
# Overrides that leave the paper's protocol and scale as published, so a run with only
# these is not partial: how many threads or how much memory a job asks for, and dropping
# the support-set augmentation this project adds to the papers' evaluation (its
# generative model is a GPU-sized experiment of its own).
SCALE_NEUTRAL = ("resources.", "eval.augment")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`section.key=value` (value read as YAML) → {"section.key": value}."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key or key.split(".")[0] not in SECTIONS:
            raise HypermetaError(
                f"--set {item!r}: write SECTION.KEY=VALUE with SECTION one of "
                f"{', '.join(SECTIONS)} (e.g. --set train.iterations=6000)."
            )
        overrides[key] = yaml.safe_load(text)
    return overrides


def workspace_params(
    raw: dict[str, Any], names: list[str], overrides: dict[str, Any], root: Path
) -> dict[str, Any]:
    """params.yaml for the workspace: the named experiments (their paper profile with
    `overrides` merged), their references, and only the datasets they use."""
    params = {**raw, "profile": PROFILE}
    experiments = {}
    for name in names:
        entry = yaml.safe_load(yaml.safe_dump(raw["experiments"][name]))  # a deep copy
        if "needs" in entry:
            entry["needs"] = needs_after(entry, overrides)
        paper = entry.setdefault("profiles", {}).setdefault(PROFILE, {})
        for dotted, value in overrides.items():
            section, *path, last = dotted.split(".")
            target = paper.setdefault(section, {})
            for key in path:
                target = target.setdefault(key, {})
            target[last] = value
        experiments[name] = entry
    params["experiments"] = experiments
    params["references"] = {n: r for n, r in raw.get("references", {}).items() if n in names}
    datasets = sorted({experiments[name]["dataset"] for name in names})
    params["data"] = {
        **raw["data"],
        "datasets": {**raw["data"]["datasets"], PROFILE: datasets},
        "mirror": mirror_location(raw["data"].get("mirror"), root),
    }
    return params


def code_snapshot(root: Path, workspace: Path) -> tuple[str, Path]:
    """The commit of HEAD and its src/ and pipeline/, unpacked once per commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    if len(commit) != 40:
        raise HypermetaError(f"{root} is not a git checkout with a commit; paper-check runs one.")
    folder = workspace / "code" / commit
    if not (folder / "src").exists():
        partial = folder.with_name(f".{commit}.partial")
        partial.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", commit, "src", "pipeline"], cwd=root, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive.stdout, check=True)
        partial.rename(folder)
    return commit, folder


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"cpu ({model}, {os.cpu_count()} cores)"


def published(exp: Experiment, params: Params, metrics: dict[str, Any]) -> list[Any]:
    rows = []
    for ref in params.references.get(exp.name, []):
        if ref.metric not in metrics or ref.dataset != exp.dataset:
            continue
        ours = float(metrics[ref.metric])
        low, high = metrics.get(f"{ref.metric}_ci_low"), metrics.get(f"{ref.metric}_ci_high")
        if low is None and f"{ref.metric}_ci95" in metrics:
            half = metrics[f"{ref.metric}_ci95"]
            low, high = ours - half, ours + half
        rows.append(
            PublishedComparison(
                metric=ref.metric,
                published=ref.value,
                source=ref.source,
                ours=ours,
                ci_low=low,
                ci_high=high,
                difference=ours - ref.value,
            )
        )
    return rows


def estimate(exp: Experiment, overrides: dict[str, Any], gpu: bool) -> str:
    minutes = exp.resources.runtime
    if "resources.runtime" in overrides:  # the user's own estimate for this machine
        return f"about {minutes} min (resources.runtime, as --set gives it)"
    if exp.resources.gpu and not gpu:
        if not overrides:
            raise HypermetaError(
                f"{exp.name}'s paper profile is sized for a GPU (resources.gpu: "
                f"{exp.resources.gpu}, about {minutes} min there) and this machine has none; "
                "run part of it here with --set (e.g. --set train.iterations=N, recorded as "
                "partial), all of it with --set resources.runtime=MINUTES (your estimate "
                "for this machine), or on a GPU."
            )
        return f"sized for a GPU; here with {overrides}, no estimate"
    return f"about {minutes} min (resources.runtime of its paper profile)"


def run_stage(stage: str, args: list[str], workspace: Path, code: Path, env: dict) -> None:
    command = [sys.executable, str(code / "pipeline" / f"{stage}.py"), *args]
    if subprocess.run(command, cwd=workspace, env=env).returncode != 0:
        raise HypermetaError(
            f"the {stage} stage of the paper-scale run failed (its message is above); fix "
            "that and run the same command again: training resumes from its checkpoint."
        )


def paper_check(names: list[str], overrides: dict[str, Any]) -> list[Path]:
    root = repo_root()
    raw = load_raw(root / "params.yaml")
    for name in names:
        if name not in raw.get("experiments", {}):
            raise HypermetaError(
                f"unknown experiment {name!r}; params.yaml defines {sorted(raw['experiments'])}."
            )
    read_params(root / "params.yaml")  # the needs checked: named, acyclic
    workspace = root / WORKSPACE
    workspace.mkdir(parents=True, exist_ok=True)
    with workspace_lock(workspace):
        return run_in_workspace(root, raw, with_needs(raw, names, overrides), overrides, workspace)


def is_partial(overrides: dict[str, Any]) -> bool:
    return any(not key.startswith(SCALE_NEUTRAL) for key in overrides)


def needs_after(entry: dict[str, Any], overrides: dict[str, Any]) -> list[str]:
    """The `needs:` of an experiment once `overrides` apply: `--set eval.augment=null`
    also drops a generative model that only its augmentation named."""
    needs = list(entry.get("needs", []))
    if "eval.augment" not in overrides or overrides["eval.augment"] is not None:
        return needs
    rest = yaml.safe_load(yaml.safe_dump(entry))  # the entry without its augmentation
    rest.pop("needs", None)
    augmenting = set()
    for section in [rest, *rest.get("profiles", {}).values()]:
        augment = (section.get("eval") or {}).pop("augment", None) or {}
        augmenting.add(augment.get("model"))
    still_named = set(string_values(rest))
    return [n for n in needs if n not in augmenting or n in still_named]


def string_values(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        data = list(data.values())
    if isinstance(data, list):
        for item in data:
            yield from string_values(item)
    elif isinstance(data, str):
        yield data


def with_needs(
    raw: dict[str, Any], names: list[str], overrides: dict[str, Any] | None = None
) -> list[str]:
    """`names` and the experiments they need (`needs:`, as `overrides` leave them), each
    after those it needs."""
    ordered: list[str] = []

    def add(name: str) -> None:
        for needed in needs_after(raw["experiments"][name], overrides or {}):
            add(needed)
        if name not in ordered:
            ordered.append(name)

    for name in names:
        add(name)
    return ordered


@contextmanager
def workspace_lock(workspace: Path) -> Iterator[None]:
    """One paper-check at a time per project: each rewrites the workspace's params.yaml."""
    from filelock import FileLock, Timeout

    lock = FileLock(workspace / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise HypermetaError(
            f"another paper-check is running in this project ({workspace} is locked); wait "
            "for it to finish, or stop it and run again (its training resumes)."
        ) from None
    try:
        yield
    finally:
        lock.release()


def run_in_workspace(
    root: Path, raw: dict[str, Any], names: list[str], overrides: dict[str, Any], workspace: Path
) -> list[Path]:
    import torch  # here, not above: `hypermeta --help` builds this parser without torch

    from hypermeta.experiments import load_params, resolve

    (workspace / "params.yaml").write_text(
        yaml.safe_dump(workspace_params(raw, names, overrides, root), sort_keys=False)
    )
    params = load_params(workspace / "params.yaml")  # every key checked before any work
    write_needs(params, workspace)
    experiments = [resolve(params, name) for name in names]
    gpu = torch.cuda.is_available()
    for exp in experiments:
        print(f"[paper-check] {exp.name}: {estimate(exp, overrides, gpu)}")
    commit, code = code_snapshot(root, workspace)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(code / "src")
    env.setdefault(URI_ENV, project_store_uri(root))
    os.environ.setdefault(URI_ENV, env[URI_ENV])  # the parent run below goes there too
    env[PARENT_ENV] = start_pipeline_run(root, params.mlflow.experiment, PROFILE, "paper-check")
    run_stage("download", [], workspace, code, env)
    run_stage("split", [], workspace, code, env)
    written = []
    for exp in experiments:
        resumed = (workspace / MODELS / exp.name / "checkpoint.pt").exists()
        began = time.perf_counter()
        run_stage("train", [exp.name], workspace, code, env)
        run_stage("evaluate", [exp.name], workspace, code, env)
        wall = time.perf_counter() - began
        metrics = json.loads((workspace / METRICS / exp.name / "metrics.json").read_text())
        manifest = json.loads((workspace / PREPARED / exp.data_name / "manifest.json").read_text())
        record = PaperRecord(
            experiment=exp.name,
            method=exp.method,
            dataset=exp.dataset,
            partial=is_partial(overrides),
            overrides=overrides,
            metrics=metrics,
            published=published(exp, params, metrics),
            git_commit=commit,
            device=device_description(),
            threads=exp.resources.threads,
            wall_seconds=round(wall, 1),
            resumed=resumed,
            data_md5=manifest["tensor_md5"],
            finished=datetime.now(UTC).isoformat(timespec="seconds"),
            mlflow_run_ids={"parent": env[PARENT_ENV], "evaluate": metrics["mlflow_run_id"]},
            command=" ".join(["hypermeta paper-check", exp.name, *set_arguments(overrides)]),
        )
        path = write_record(record, root / "results")
        print(f"[paper-check] {exp.name}: kept {path.relative_to(root)} ({wall / 60:.1f} min)")
        written.append(path)
    from hypermeta.report import update_readme

    update_readme(root)
    print('[paper-check] README.md\'s table "Reproduced at paper scale" now shows them.')
    return written


def set_arguments(overrides: dict[str, Any]) -> list[str]:
    """The --set arguments that give `overrides` back (values in YAML's flow style)."""
    return [f"--set {key}={json.dumps(value)}" for key, value in overrides.items()]


HELP = "run experiments at their paper profile and keep the results under results/"


def setup(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("experiments", nargs="+", help="experiments named in params.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override the paper profile (e.g. train.iterations=6000); recorded as partial "
        "unless it only sets resources or drops eval.augment (--set eval.augment=null)",
    )
    parser.set_defaults(
        handler=lambda args: paper_check(args.experiments, parse_overrides(args.overrides))
    )


TOOL = (HELP, setup)
