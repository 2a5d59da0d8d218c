"""The pipeline stages but visualize (hypermeta.plots) and report (hypermeta.report): each
lives with what it runs, so that what a stage imports is what it runs (its dvc.yaml
fingerprint, hypermeta.sources). Each reads only its own params, writes only its declared
outputs (atomically), and logs a child MLflow run. `pipeline/*.py` and the CLI call these."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypermeta.atomic import write_json
from hypermeta.config import Experiment, Params, params_hash, split_config
from hypermeta.dag import NEEDS_FILE, check_needs_file
from hypermeta.engine import StageContext, get_engine
from hypermeta.engine.device import fix_numerics
from hypermeta.experiments import load_params, resolve
from hypermeta.paths import METRICS, MODELS, PLOTS, PREPARED, RAW, repo_root
from hypermeta.tracking import Tracker, stage_run


def read_manifest(exp: Experiment) -> dict[str, Any] | None:
    """The split stage's manifest of the experiment's dataset, once it is prepared."""
    path = PREPARED / exp.data_name / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


@contextmanager
def child_run(
    params: Params, stage: str, exp: Experiment | None = None, reads: Any = None
) -> Iterator[Tracker]:
    """A child run; `reads` is the params a stage without an experiment depends on."""
    tags = {
        "hypermeta.profile": params.profile,
        "hypermeta.params_hash": exp.params_hash if exp else params_hash(reads),
    }
    if exp is not None and (manifest := read_manifest(exp)) is not None:
        tags["hypermeta.data_md5"] = json.dumps(manifest["tensor_md5"], sort_keys=True)
    with stage_run(
        repo_root(), params.mlflow.experiment, stage, experiment=exp and exp.name, tags=tags
    ) as tracker:
        if exp is not None:
            tracker.log_params({"experiment": exp.name, "profile": exp.profile, **exp.section})
        yield tracker


def stage_context(exp: Experiment, tracker: Tracker) -> StageContext:
    """Where an experiment's stages read and write, as dvc.yaml declares it; with the
    threads and kernels their numbers depend on fixed by the experiment."""
    fix_numerics(exp.resources.threads)
    return StageContext(
        experiment=exp,
        data_dir=PREPARED / exp.data_name,
        model_dir=MODELS / exp.name,
        metrics_dir=METRICS / exp.name,
        plots_dir=PLOTS / exp.name,
        tracker=tracker,
    )


def data_params(params: Params) -> dict[str, Any]:
    return {"profile": params.profile, "data": params.data.model_dump()}


def download() -> None:
    from hypermeta.data.download import download as fetch
    from hypermeta.data.download import mirror_location

    params = load_params()
    mirror = mirror_location(params.data.mirror, repo_root())
    with child_run(params, "download", reads=data_params(params)) as tracker:
        datasets = params.data.datasets[params.profile]
        tracker.log_params({"datasets": ",".join(datasets), "mirror": mirror or ""})
        for dataset in datasets:
            fetch(dataset, RAW, mirror)


# The threads of the stages that belong to no experiment (the Snakefile asks for these).
SHARED_STAGE_THREADS = 1


def split() -> None:
    from hypermeta.data.prepare import prepare

    # the prepared statistics (a dataset's mean) are float sums: as many threads however
    # the stage is started (Snakemake's OMP_NUM_THREADS=1, `dvc repro`'s one per core)
    fix_numerics(SHARED_STAGE_THREADS)
    params = load_params()
    with child_run(params, "split", reads=data_params(params)) as tracker:
        split_settings = split_config(params)
        tracker.log_params(split_settings.model_dump())
        for dataset in params.data.datasets[params.profile]:
            for folder, manifest in prepare(dataset, RAW, PREPARED, split_settings).items():
                counts = manifest["counts"]
                tracker.log_metrics({f"{folder}.{k}": v for k, v in counts.items()})
                tracker.log_artifact(PREPARED / folder / "manifest.json", f"manifests/{folder}")


def train(name: str) -> None:
    params = load_params()
    exp = resolve(params, name)
    if exp.needs or NEEDS_FILE.exists():  # else DVC may have ordered it before its needs
        check_needs_file(params)
    with child_run(params, "train", exp) as tracker:
        ctx = stage_context(exp, tracker)
        engine = get_engine(exp.kind)
        engine.train(ctx)
        model, usage = engine.trained_model(ctx)
        tracker.log_model(
            model,
            usage,
            {"experiment": exp.name, "method": exp.method, "params_hash": exp.params_hash},
        )
        # hypermeta's own files, which `hypermeta fewshot|lm --load-model` read
        tracker.log_artifact(ctx.model_path, "saved")
        tracker.log_artifact(ctx.history_path, "saved")
        if ctx.checkpoint_path.exists():  # the resumable state, e.g. to continue elsewhere
            tracker.log_artifact(ctx.checkpoint_path, "checkpoint")


def evaluate(name: str) -> dict[str, Any]:
    params = load_params()
    exp = resolve(params, name)
    with child_run(params, "evaluate", exp) as tracker:
        ctx = stage_context(exp, tracker)
        metrics = get_engine(exp.kind).evaluate(ctx)
        tracker.log_metrics(metrics)
        record = {
            **metrics,
            "experiment": exp.name,
            "method": exp.method,
            "dataset": exp.dataset,
            "profile": exp.profile,
            "params_hash": exp.params_hash,
            "mlflow_run_id": tracker.run_id or "",
        }
        write_json(ctx.metrics_dir / "metrics.json", record)
        tracker.log_artifact(ctx.metrics_dir / "metrics.json")
        return record
