"""Stage tracking against a real `mlflow server` on 127.0.0.1: the pipeline's own server
starts once per invocation and stops when the invocation ends, stages log over HTTP
without importing mlflow, and eight parallel writers lose no run, through the server or
straight into the sqlite store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from hypermeta.errors import HypermetaError
from hypermeta.tracking import (
    PARENT_ENV,
    SERVER_ENV,
    URI_ENV,
    HttpStore,
    SqlStore,
    init_store,
    tracking_uri,
)
from hypermeta.tracking_server import STATE, _healthy, ensure_server

pytestmark = pytest.mark.integration
SRC = Path(__file__).resolve().parents[2] / "src"

# One stage-like writer: a child run with params, per-epoch metrics and an artifact.
WRITER = """
import sys
from pathlib import Path
from hypermeta.tracking import stage_run
root, name = Path(sys.argv[1]), sys.argv[2]
(root / f"{name}.txt").write_text(name)
with stage_run(root, "hypermeta", "train", experiment=name, tags={"writer": name}) as tracker:
    tracker.log_params({"model": {"width": 3}})
    for epoch in range(1, 4):
        tracker.log_metrics({"loss": 1.0 / epoch}, step=epoch)
    tracker.log_artifact(root / f"{name}.txt", "model")
print("imported mlflow:", "mlflow" in sys.modules)
"""


@pytest.fixture
def watched():
    """Stands in for the invocation's process (snakemake, or dvc repro)."""
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


def key_of(process: subprocess.Popen) -> str:
    return f"dvc-{process.pid}-{psutil.Process(process.pid).create_time():.0f}"


def writers(root: Path, env: dict[str, str], count: int = 8) -> list[str]:
    env = {**env, "PYTHONPATH": str(SRC)}
    started = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), f"w{i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(count)
    ]
    outputs = []
    for process in started:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        outputs.append(out)
    return outputs


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("HYPERMETA_", "MLFLOW_"))}


def check_runs(root: Path, uri: str, count: int = 8) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hypermeta")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert sorted(r.data.tags["writer"] for r in runs) == sorted(f"w{i}" for i in range(count))
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["model.width"] == "3"
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
        name = run.data.tags["writer"]
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "model")]
        assert artifacts == [f"model/{name}.txt"]
        assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(root)


def test_the_invocation_server_serves_parallel_writers_and_stops_with_it(tmp_path, watched):
    uri = ensure_server(tmp_path, key_of(watched))
    assert uri.startswith("http://127.0.0.1:") and _healthy(uri)
    assert ensure_server(tmp_path, key_of(watched)) == uri  # one server per invocation
    env = {**clean_env(), SERVER_ENV: uri}
    outputs = writers(tmp_path, env)
    assert all("imported mlflow: False" in out for out in outputs)
    check_runs(tmp_path, uri)
    assert HttpStore(uri).experiment("no such experiment") is None
    # MLflow's GenAI job consumers (a third of a core, polling) are not started
    supervisor = psutil.Process(json.loads((tmp_path / STATE).read_text())["pid"])
    commands = [" ".join(child.cmdline()) for child in supervisor.children(recursive=True)]
    assert any("mlflow" in command for command in commands), commands
    assert not any("huey" in command for command in commands), commands

    watched.kill()
    watched.wait()
    deadline = time.monotonic() + 30
    while _healthy(uri) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not _healthy(uri), "the server outlived its invocation"
    assert not (tmp_path / STATE).exists()
    # the runs are in the project's own sqlite store, where a stage run by hand logs too
    check_runs(tmp_path, f"sqlite:///{tmp_path}/mlflow.db")


def test_parallel_writers_without_a_server_use_the_sqlite_store(tmp_path):
    outputs = writers(tmp_path, clean_env())
    assert all("imported mlflow: True" in out for out in outputs)
    check_runs(tmp_path, f"sqlite:///{tmp_path}/mlflow.db")


def test_a_stage_by_hand_logs_to_the_project_store_and_a_users_store_wins(tmp_path, monkeypatch):
    for name in (URI_ENV, SERVER_ENV, PARENT_ENV):
        monkeypatch.delenv(name, raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv(SERVER_ENV, "http://127.0.0.1:1")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:1"
    monkeypatch.setenv(URI_ENV, "http://tracking.example:5000")
    assert tracking_uri(tmp_path) == "http://tracking.example:5000"


def test_a_killed_stages_run_is_marked_killed_when_the_stage_starts_again(tmp_path, watched):
    env = {**clean_env(), SERVER_ENV: ensure_server(tmp_path, key_of(watched))}
    env["PYTHONPATH"] = str(SRC)
    line = '    tracker.log_artifact(root / f"{name}.txt", "model")\n'
    hanging = WRITER.replace(line, line + "    __import__('time').sleep(600)\n")  # in its run
    assert hanging != WRITER
    stage = subprocess.Popen(
        [sys.executable, "-c", hanging, str(tmp_path), "w0"], env=env, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    store = HttpStore(env[SERVER_ENV])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        (experiment := store.experiment("hypermeta"))
        and store.find_runs(experiment.experiment_id, "attributes.status = 'RUNNING'", 5)
    ):
        time.sleep(0.5)
    [killed] = store.find_runs(experiment.experiment_id, "attributes.status = 'RUNNING'", 5)
    stage.kill()  # SIGKILL: the run is never closed by the stage itself
    stage.wait()
    assert store.run_status(killed.run_id) == "RUNNING"
    writers(tmp_path, env, count=1)  # the same stage of the same experiment, run again
    assert store.run_status(killed.run_id) == "KILLED"


def test_a_store_copied_with_its_project_is_refused_with_the_fix(tmp_path):
    original = tmp_path / "original"
    original.mkdir()
    writers(original, clean_env(), count=1)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    with pytest.raises(HypermetaError, match="another project's folder.*delete them here"):
        init_store(copy, SqlStore(f"sqlite:///{copy}/mlflow.db"), "hypermeta")
    assert not list((original / "mlartifacts").rglob("copy*"))


# A train stage's last step: its trained module logged as the run's MLflow model.
MODEL_WRITER = """
import sys
from pathlib import Path
import torch
from hypermeta.nn import MLP
from hypermeta.tracking import stage_run
root = Path(sys.argv[1])
torch.manual_seed(0)
model = MLP(3, [5], 2).eval()
torch.save(model.state_dict(), root / "weights.pt")
with stage_run(root, "hypermeta", "train", experiment="mlp") as tracker:
    tracker.log_model(model, "model(x (N, 3)) -> (N, 2)", {"experiment": "mlp"})
"""


def test_a_trained_model_loads_back_from_its_run(tmp_path, watched):
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from hypermeta.nn import MLP

    uri = ensure_server(tmp_path, key_of(watched))
    env = {**clean_env(), SERVER_ENV: uri, "PYTHONPATH": str(SRC)}
    subprocess.run(
        [sys.executable, "-c", MODEL_WRITER, str(tmp_path)], env=env, check=True, timeout=300
    )
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hypermeta")
    [run] = client.search_runs([experiment.experiment_id])
    # the UI's Models column: a logged model whose source is the train run
    [logged] = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert logged.source_run_id == run.info.run_id and logged.name == "model"
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    trained = MLP(3, [5], 2)
    trained.load_state_dict(torch.load(tmp_path / "weights.pt"))
    x = torch.randn(7, 3)
    assert isinstance(loaded, MLP) and torch.equal(loaded(x), trained(x))
    info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert info.metadata == {"experiment": "mlp", "usage": "model(x (N, 3)) -> (N, 2)"}
