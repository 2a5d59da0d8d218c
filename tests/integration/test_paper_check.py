"""`hypermeta paper-check` in a git copy of the project: a paper-profile run (made
small with --set, so recorded as partial) killed while it trains resumes when the same
command runs again, writes its record under results/, and logs to the project's store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from scratch_project import Project, copy_project

from hypermeta.results import load_records

pytestmark = pytest.mark.integration
COMMAND = [
    "hypermeta", "paper-check", "maml_sine",
    "--set", "train.meta_iterations=600", "--set", "train.checkpoint_every=20",
    "--set", "train.log_every=200", "--set", "eval.n_tasks=50",
]  # fmt: skip


def test_a_killed_paper_check_resumes_and_keeps_its_record(tmp_path):
    copy_project(tmp_path, leave_out=("results/",))  # the project's own records stay out
    project = Project(tmp_path)
    project.init_repository(dvc=False, commit="copy under test")
    head = project.run("git", "rev-parse", "HEAD").strip()
    checkpoint = tmp_path / ".hypermeta/paper/models/maml_sine/checkpoint.pt"

    first = subprocess.Popen(
        COMMAND, cwd=tmp_path, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), first.communicate()[0][-3000:]
    os.killpg(first.pid, signal.SIGKILL)  # the whole run, its stage processes too
    first.wait()
    assert not (tmp_path / "results/maml_sine.json").exists()

    output = project.run(*COMMAND)
    assert "maml_sine: about 10 min" in output  # the estimate, before the run
    assert "resuming" in output
    record = load_records(tmp_path / "results")["maml_sine"]
    assert record.git_commit == head and record.resumed and record.partial
    assert record.overrides["train.meta_iterations"] == 600
    assert record.profile == "paper" and record.metrics["profile"] == "paper"
    assert {row.metric for row in record.published} == {"mse_k5", "mse_k10"}
    for row in record.published:
        assert row.ci_low < row.ours < row.ci_high
        assert row.difference == pytest.approx(row.ours - row.published)
    history = json.loads((tmp_path / ".hypermeta/paper/models/maml_sine/history.json").read_text())
    assert [row["iteration"] for row in history] == [200, 400, 600]
    # the project's own outputs and store: untouched outputs, the runs in its MLflow store
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("hypermeta")
    runs = client.search_runs([experiment.experiment_id], "tags.`hypermeta.profile` = 'paper'")
    assert {r.data.tags["hypermeta.stage"] for r in runs} >= {"train", "evaluate", "pipeline"}
    assert record.mlflow_run_ids["evaluate"] in {r.info.run_id for r in runs}
