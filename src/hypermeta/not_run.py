"""Experiments that only some profiles run (`run_in:` in params.yaml).

dvc.yaml builds each experiment's stages with `foreach`, and DVC has no stage that
depends on a parameter's value, so an experiment's stages exist under every profile.
Under a profile that does not run it (e.g. a paper-only GPU experiment in the quick
profile), its stages write small records saying so where DVC expects their outputs, in
a fraction of a second: they read params.yaml as plain YAML, without torch or mlflow.
Every reader of those records (evaluation, the report, `fewshot predict`, `lm eval`,
resuming training) then says that the experiment was not run, and how to run it.

A record is JSON, `{"not_run": <sentence>}`; a real model or checkpoint file is a torch
zip archive, so the two cannot be mistaken for each other.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypermeta import METRICS, MODELS, PLOTS
from hypermeta.errors import HypermetaError

KEY = "not_run"


def reason(experiment: str, run_in: list[str], profile: str) -> str:
    """The sentence every record and error carries."""
    profiles = " or ".join(run_in)
    return (
        f"experiment {experiment} runs only under profile {profiles} (run_in in params.yaml) "
        f"and was not run under {profile}; run it with `snakemake --config profile={run_in[0]}` "
        f"or `dvc exp run -S profile={run_in[0]}`"
    )


def skip_reason(experiment: str, params_path: Path = Path("params.yaml")) -> str | None:
    """Why the active profile does not run `experiment`, or None when it does, or when
    params.yaml does not say so validly (the stage's full load then names the problem)."""
    from hypermeta.config import load_raw, runs_under

    raw = load_raw(params_path)
    entry = (raw.get("experiments") or {}).get(experiment)
    run_in = entry.get("run_in") if isinstance(entry, dict) else None
    profile = raw.get("profile")
    if not isinstance(run_in, list) or not run_in or runs_under(run_in, profile):
        return None  # runs here, or run_in is malformed: the full load names the problem
    if not set(run_in) <= set(raw.get("profiles") or {}):  # a typo: let validation say so
        return None
    return reason(experiment, [str(p) for p in run_in], str(profile))


def write_records(stage: str, experiment: str, why: str) -> None:
    """What `stage` of an experiment the profile does not run leaves for DVC: a record
    in each declared output (dvc.yaml), and the folder of plots empty."""
    from hypermeta.atomic import write_text

    record = json.dumps({KEY: why}, indent=1) + "\n"
    if stage == "train":
        model_dir = MODELS / experiment
        write_text(model_dir / "model.pt", record)
        write_text(model_dir / "history.json", record)
        checkpoint = model_dir / "checkpoint.pt"
        if not checkpoint.exists():  # a real one, from a profile that runs it, is kept
            write_text(checkpoint, record)
    elif stage == "evaluate":
        write_text(METRICS / experiment / "metrics.json", record)
    elif stage == "visualize":
        (PLOTS / experiment).mkdir(parents=True, exist_ok=True)
    print(f"[hypermeta] {stage}: {why}.")


def recorded_reason(path: Path) -> str | None:
    """The sentence of a not-run record at `path`; None for any other file."""
    path = Path(path)
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        if handle.read(1) != b"{":
            return None
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get(KEY) if isinstance(data, dict) else None


def check_trained(path: Path, fix: str = "run the train stage for this experiment") -> None:
    """Raise one sentence if `path` is not a trained model: missing (say `fix`), or a
    not-run record."""
    path = Path(path)
    if not path.exists():
        raise HypermetaError(f"{path} not found; {fix}.")
    if why := recorded_reason(path):
        raise HypermetaError(f"{path} holds no trained model: {why}.")
