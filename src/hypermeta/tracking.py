"""The only module that talks to MLflow.

Store: `MLFLOW_TRACKING_URI` when set; else, inside a pipeline invocation (Snakemake or
`dvc repro`), the invocation's own `mlflow server` on 127.0.0.1 (tracking_server.py)
over `sqlite:///<repo>/mlflow.db`; else (a stage run by hand) that sqlite store
directly. Artifacts of the project's store live in `<repo>/mlartifacts` either way.

Stages talk to an HTTP store with the standard library (`HttpStore`): importing mlflow
and its SQLAlchemy store costs 2-4 s, more than most stage jobs' own work. Any other
store goes through mlflow's client (`SqlStore`). Both offer the few calls below.

One parent run per pipeline invocation and one child run per stage × experiment. The
parent is named by `HYPERMETA_PARENT_RUN_ID` (the Snakefile sets it) or found through
the nearest `snakemake`/`dvc` ancestor process, so stages that `dvc repro` runs one
after another share a parent too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hypermeta.errors import HypermetaError

PARENT_ENV = "HYPERMETA_PARENT_RUN_ID"
DISABLE_ENV = "HYPERMETA_TRACKING"  # "off": stages log nothing (unit tests, quick checks)
URI_ENV = "MLFLOW_TRACKING_URI"  # a store of the user's choosing wins
SERVER_ENV = "HYPERMETA_MLFLOW_SERVER"  # the invocation's own server (the Snakefile sets it)


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def log_model(self, model: Any, usage: str, metadata: dict[str, str]) -> None: ...


class NullTracker:
    """Logs nothing: for code run outside the pipeline."""

    run_id = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_model(self, model: Any, usage: str, metadata: dict[str, str]) -> None:
        pass


Metric = tuple[str, float, int, int]  # key, value, timestamp (ms), step


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    artifact_location: str
    tags: dict[str, str]


@dataclass(frozen=True)
class Run:
    run_id: str
    tags: dict[str, str]


class Store(Protocol):
    """What the pipeline needs of an MLflow tracking store."""

    tracking_uri: str

    def experiment(self, name: str) -> Experiment | None: ...
    def create_experiment(self, name: str, artifact_location: str | None) -> str: ...
    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None: ...
    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str: ...
    def log_batch(self, run_id: str, params: dict[str, str], metrics: list[Metric]) -> None: ...
    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None) -> None: ...
    def run_status(self, run_id: str) -> str: ...
    def set_terminated(self, run_id: str, status: str) -> None: ...
    def find_runs(self, experiment_id: str, where: str, limit: int) -> list[Run]: ...


class SqlStore:
    """Any store mlflow's client reaches (sqlite, a database, a file store)."""

    def __init__(self, uri: str) -> None:
        self.tracking_uri = uri

    @functools.cached_property
    def client(self) -> Any:
        """Made on first use, which is init_store's, under its lock: making one creates
        and migrates a new sqlite store, which parallel first writers would race at."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def experiment(self, name: str) -> Experiment | None:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            return None
        return Experiment(found.experiment_id, found.artifact_location, dict(found.tags))

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self.client.set_experiment_tag(experiment_id, key, value)

    def create_experiment(self, name: str, artifact_location: str | None) -> str:
        return self.client.create_experiment(name, artifact_location=artifact_location)

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        return self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

    def log_batch(self, run_id: str, params: dict[str, str], metrics: list[Metric]) -> None:
        from mlflow.entities import Metric as MlflowMetric
        from mlflow.entities import Param

        self.client.log_batch(
            run_id,
            params=[Param(k, v) for k, v in params.items()],
            metrics=[MlflowMetric(*metric) for metric in metrics],
        )

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None) -> None:
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def set_terminated(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def find_runs(self, experiment_id: str, where: str, limit: int) -> list[Run]:
        found = self.client.search_runs([experiment_id], filter_string=where, max_results=limit)
        return [Run(run.info.run_id, dict(run.data.tags)) for run in found]


class HttpStore:
    """An MLflow tracking server through its REST API (api/2.0/mlflow), standard library
    only. Artifacts go where the run's artifact URI says: a `file:` folder (the project's
    own server on this machine) is written directly, `mlflow-artifacts:` through the
    server's artifact proxy."""

    def __init__(self, uri: str) -> None:
        self.tracking_uri = uri.rstrip("/")
        self.artifact_uris: dict[str, str] = {}

    def _call(self, endpoint: str, body: dict[str, Any] | None = None, **query: str) -> Any:
        url = f"{self.tracking_uri}/api/2.0/mlflow/{endpoint}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
        request.add_header("Content-Type", "application/json")
        return json.loads(self._send(request) or b"{}")

    def _send(self, request: urllib.request.Request) -> bytes:
        for attempt in range(5):  # a busy server (sqlite locked, a restart) gets a moment
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:300]
                if exc.code < 500 or attempt == 4:
                    raise HypermetaError(
                        f"the MLflow server at {self.tracking_uri} refused "
                        f"{request.full_url} ({exc.code}: {detail})."
                    ) from None
            except (urllib.error.URLError, OSError) as exc:
                if attempt == 4:
                    raise HypermetaError(
                        f"the MLflow server at {self.tracking_uri} does not answer ({exc}); "
                        f"start it, or unset {URI_ENV} to log to the project's own store."
                    ) from None
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def experiment(self, name: str) -> Experiment | None:
        try:
            found = self._call("experiments/get-by-name", experiment_name=name)["experiment"]
        except HypermetaError as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc):
                return None
            raise
        tags = {tag["key"]: tag["value"] for tag in found.get("tags", [])}
        return Experiment(found["experiment_id"], found["artifact_location"], tags)

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        body = {"experiment_id": experiment_id, "key": key, "value": value}
        self._call("experiments/set-experiment-tag", body)

    def create_experiment(self, name: str, artifact_location: str | None) -> str:
        body = {"name": name}
        if artifact_location:
            body["artifact_location"] = artifact_location
        return self._call("experiments/create", body)["experiment_id"]

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        run = self._call(
            "runs/create",
            {
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": int(time.time() * 1000),
                "tags": [{"key": k, "value": v} for k, v in tags.items()],
            },
        )["run"]
        self.artifact_uris[run["info"]["run_id"]] = run["info"]["artifact_uri"]
        return run["info"]["run_id"]

    def log_batch(self, run_id: str, params: dict[str, str], metrics: list[Metric]) -> None:
        self._call(
            "runs/log-batch",
            {
                "run_id": run_id,
                "params": [{"key": k, "value": v} for k, v in params.items()],
                "metrics": [
                    {"key": k, "value": v, "timestamp": t, "step": s} for k, v, t, s in metrics
                ],
            },
        )

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None) -> None:
        """As mlflow's client: a file lands in `artifact_path/`, a folder's contents too."""
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            inside = file.relative_to(path) if path.is_dir() else Path(file.name)
            self._put(run_id, file, (Path(artifact_path or "") / inside).as_posix())

    def _put(self, run_id: str, file: Path, target: str) -> None:
        uri = (
            self.artifact_uris.get(run_id)
            or self._call("runs/get", run_id=run_id)["run"]["info"]["artifact_uri"]
        )
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme == "file":
            destination = Path(urllib.request.url2pathname(parsed.path)) / target
            destination.parent.mkdir(parents=True, exist_ok=True)
            partial = destination.with_name(f".{destination.name}.partial")
            shutil.copyfile(file, partial)
            os.replace(partial, destination)
        elif parsed.scheme == "mlflow-artifacts":
            url = f"{self.tracking_uri}/api/2.0/mlflow-artifacts/artifacts"
            url += urllib.parse.quote(f"{parsed.path.rstrip('/')}/{target}")
            request = urllib.request.Request(url, data=file.read_bytes(), method="PUT")
            self._send(request)
        else:
            raise HypermetaError(
                f"the run's artifact location {uri} is neither a local folder nor served by "
                f"the MLflow server at {self.tracking_uri}; start that server with "
                "--serve-artifacts, or log to the project's own store."
            )

    def run_status(self, run_id: str) -> str:
        return self._call("runs/get", run_id=run_id)["run"]["info"]["status"]

    def set_terminated(self, run_id: str, status: str) -> None:
        body = {"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)}
        self._call("runs/update", body)

    def find_runs(self, experiment_id: str, where: str, limit: int) -> list[Run]:
        body = {"experiment_ids": [experiment_id], "filter": where, "max_results": limit}
        return [
            Run(run["info"]["run_id"], {t["key"]: t["value"] for t in run["data"].get("tags", [])})
            for run in self._call("runs/search", body).get("runs", [])
        ]


def open_store(uri: str) -> Store:
    return HttpStore(uri) if uri.startswith(("http://", "https://")) else SqlStore(uri)


class MlflowTracker:
    def __init__(self, store: Store, experiment_id: str, run_id: str) -> None:
        self.store = store
        self.experiment_id = experiment_id
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        flat = [(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(flat), 100):
            self.store.log_batch(self.run_id, dict(flat[start : start + 100]), [])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [
            (k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if batch:
            self.store.log_batch(self.run_id, {}, batch)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.store.log_artifact(self.run_id, Path(path), artifact_path)

    def log_model(self, model: Any, usage: str, metadata: dict[str, str]) -> None:
        """`model` (an nn.Module) as this run's MLflow model "model": the UI's Models
        column, `mlflow.pytorch.load_model("runs:/<run>/model")`. The one call that
        imports mlflow in a pipeline job (about 1.3 s; only train stages make it).

        Pickled, not MLflow's default pt2: torch.export needs an input example and one
        traced forward, which few-shot learners (adapting inside) do not have. Loading
        it needs hypermeta importable, as its classes are pickled by reference."""
        import logging

        import mlflow
        import mlflow.pytorch

        mlflow.set_tracking_uri(self.store.tracking_uri)
        mlflow.set_experiment(experiment_id=self.experiment_id)  # else models go to "Default"
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # the pickle warning
        mlflow.pytorch.log_model(
            model,
            name="model",
            run_id=self.run_id,
            serialization_format="pickle",
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            metadata={**metadata, "usage": usage},
        )


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def project_store_uri(root: Path) -> str:
    """The project's own store, which its pipeline server serves too."""
    return f"sqlite:///{Path(root).resolve()}/mlflow.db"


def artifact_root(root: Path) -> str:
    return (Path(root).resolve() / "mlartifacts").as_uri()


def tracking_uri(root: Path) -> str:
    """Where this process logs (see the module's docstring)."""
    if os.environ.get(URI_ENV):
        return os.environ[URI_ENV]
    if os.environ.get(SERVER_ENV):
        return os.environ[SERVER_ENV]
    key = invocation_key()
    if key is not None:
        from hypermeta.tracking_server import ensure_server

        return ensure_server(root, key)
    return project_store_uri(root)


def _lock(uri: str):
    from filelock import FileLock

    digest = hashlib.sha1(uri.encode()).hexdigest()[:12]
    return FileLock(Path(tempfile.gettempdir()) / f"hypermeta-mlflow-{digest}.lock")


# What MLflow 3's UI opens an experiment on: the runs, not the GenAI traces overview.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def init_store(root: Path, store: Store, experiment_name: str) -> str:
    """Create the experiment once (first use by parallel processes races); return its id.
    In the project's own store its artifacts go to `<repo>/mlartifacts`; a store whose
    artifacts go into another folder (a project copied or moved with its store) is
    refused, since every run would write its files there."""
    # The project's own: through its pipeline server, or its sqlite store named or not (a
    # paper-check workspace inside the project logs to the project's store, not its own).
    own = not os.environ.get(URI_ENV) or store.tracking_uri == project_store_uri(root)
    with _lock(store.tracking_uri):
        experiment = store.experiment(experiment_name)
        if experiment is None:
            experiment_id = store.create_experiment(
                experiment_name, artifact_root(root) if own else None
            )
            store.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
            return experiment_id
    location = experiment.artifact_location
    if own and location.startswith("file:") and location != artifact_root(root):
        raise HypermetaError(
            f"the MLflow store of {Path(root).resolve()} keeps its artifacts in {location}, "
            "another project's folder (the project was copied or moved with mlflow.db): "
            "move mlflow.db and mlartifacts/ back with their project, or delete them here "
            "to start a new store."
        )
    if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # a store made before
        store.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
    return experiment.experiment_id


def git_commit(root: Path) -> str:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if dirty else commit


def invocation_key(include_self: bool = False) -> str | None:
    """Identify the snakemake or dvc process this stage runs under (pid + start time)."""
    import psutil

    try:
        process = psutil.Process() if include_self else psutil.Process().parent()
        while process is not None:
            words = " ".join(process.cmdline()[:3])
            for engine in ("snakemake", "dvc"):
                if engine in words:
                    return f"{engine}-{process.pid}-{process.create_time():.0f}"
            process = process.parent()
    except psutil.Error:
        return None
    return None


PROCESS_TAG = "hypermeta.process"  # host:pid:start time of the process a run belongs to


def process_tag(pid: int | None = None) -> str:
    import psutil

    process = psutil.Process(pid)
    return f"{socket.gethostname()}:{process.pid}:{process.create_time():.0f}"


def process_ended(tag: str) -> bool:
    """Whether the process a PROCESS_TAG names has ended (one on another host: unknown)."""
    import psutil

    host, pid, started = tag.rsplit(":", 2)
    if host != socket.gethostname():
        return False
    try:
        return f"{psutil.Process(int(pid)).create_time():.0f}" != started
    except psutil.Error:
        return True


def end_dead_runs(store: Store, experiment_id: str, stage: str, experiment: str | None) -> None:
    """Mark KILLED the runs of this stage (× experiment) still RUNNING whose process has
    ended: a job killed outright (SIGKILL, a lost node) never closed its run."""
    where = f"tags.`hypermeta.stage` = '{stage}' and attributes.status = 'RUNNING'"
    if experiment:
        where += f" and tags.`hypermeta.experiment` = '{experiment}'"
    for run in store.find_runs(experiment_id, where, 100):
        if process_ended(run.tags.get(PROCESS_TAG, "?:0:0")):
            store.set_terminated(run.run_id, "KILLED")


def parent_run(store: Store, experiment_id: str, tags: dict[str, str]) -> str | None:
    """The parent run for this pipeline invocation, created on first use."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    key = invocation_key()
    if key is None:
        return None
    with _lock(store.tracking_uri + key):
        found = store.find_runs(experiment_id, f"tags.`hypermeta.invocation` = '{key}'", 1)
        if found:
            return found[0].run_id
        engine, pid, _ = key.split("-")
        end_dead_runs(store, experiment_id, "pipeline", None)
        return store.create_run(
            experiment_id,
            f"pipeline ({engine})",
            {
                **tags,
                "hypermeta.invocation": key,
                "hypermeta.stage": "pipeline",
                PROCESS_TAG: process_tag(int(pid)),
            },
        )


def start_pipeline_run(root: Path, experiment_name: str, profile: str, engine: str) -> str:
    """Create the parent run for a pipeline invocation (the Snakefile's onstart)."""
    store = open_store(tracking_uri(root))
    experiment_id = init_store(root, store, experiment_name)
    end_dead_runs(store, experiment_id, "pipeline", None)
    return store.create_run(
        experiment_id,
        f"pipeline ({engine})",
        {
            PROCESS_TAG: process_tag(),
            "hypermeta.stage": "pipeline",
            "hypermeta.profile": profile,
            "hypermeta.git_commit": git_commit(root),
        },
    )


@contextmanager
def stage_run(
    root: Path,
    experiment_name: str,
    stage: str,
    *,
    experiment: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[Tracker]:
    """A child MLflow run for one stage (× experiment); FAILED if the stage raises."""
    if os.environ.get(DISABLE_ENV, "").lower() == "off":
        yield NullTracker()
        return
    store = open_store(tracking_uri(root))
    experiment_id = init_store(root, store, experiment_name)
    base_tags = {"hypermeta.git_commit": git_commit(root), **(tags or {})}
    parent_id = parent_run(store, experiment_id, base_tags)
    run_tags = {**base_tags, "hypermeta.stage": stage, PROCESS_TAG: process_tag()}
    if experiment:
        run_tags["hypermeta.experiment"] = experiment
    if parent_id:
        run_tags["mlflow.parentRunId"] = parent_id
    end_dead_runs(store, experiment_id, stage, experiment)
    # named so that a person finds an experiment's runs by its name in the UI's run list
    name = f"{experiment} · {stage}" if experiment else stage
    run_id = store.create_run(experiment_id, name, run_tags)
    status = "FAILED"
    try:
        yield MlflowTracker(store, experiment_id, run_id)
        status = "FINISHED"
    finally:
        store.set_terminated(run_id, status)
        # The parent ends with its latest stage, and once FAILED stays FAILED.
        if parent_id and store.run_status(parent_id) != "FAILED":
            store.set_terminated(parent_id, status)
