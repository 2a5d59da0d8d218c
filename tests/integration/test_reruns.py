"""What reruns after an edit, with the real tools, on a subset of the quick pipeline in a
temporary git + DVC copy of the project: `dvc repro` rerunning exactly what a parameter
edit, a method file's edit or the report's edit touches, and Snakemake agreeing; an
earlier commit's results coming back with `dvc checkout`; a killed training resuming.

The subset (SUBSET) keeps every kind of dependency the edits reach: two MNIST experiments
sharing a data set, and pretrain_omniglot with leo_omniglot, which `needs` its model. It
runs in about three minutes, against the quarter of an hour of the whole quick pipeline
(test_pipeline.py), so the two files run side by side; fewer stages also make each
`dvc status` and `dvc repro` quicker.

The tests share one copy and run in file order, each building on the last."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from scratch_project import Project, digests, rules, snakemake_jobs, subset_project

from hypermeta.experiments import load_params, resolve

pytestmark = pytest.mark.integration
SUBSET = ("cnn", "hypercnn", "pretrain_omniglot", "leo_omniglot")


def dvc_ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def dvc_stale(project: Project) -> set[str]:
    """The stages `dvc status` lists once `dvc repro sources` has refreshed what each
    stage runs (before, a source edit shows only as `sources` changed)."""
    project.run(sys.executable, "-m", "dvc", "repro", "sources")
    output = project.run(sys.executable, "-m", "dvc", "status")
    return set(re.findall(r"^(\S+):$", output, re.MULTILINE))


def append_comment(path: Path) -> None:
    path.write_text(path.read_text() + "# an edit that changes no behaviour\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    return subset_project(tmp_path_factory.mktemp("reruns"), SUBSET, ["mnist", "omniglot"])


def test_the_subset_runs_through_snakemake_and_dvc_agrees(project):
    began = time.perf_counter()
    output = project.run("snakemake", "--cores", "2")
    print(f"subset through snakemake: {time.perf_counter() - began:.0f} s")
    planned = {f"{stage}@{name}" for stage in ("train", "evaluate", "visualize") for name in SUBSET}
    planned |= {"download", "split", "needs@leo_omniglot+pretrain_omniglot", "report"}
    assert snakemake_jobs(output) == rules(planned)
    assert "Data and pipelines are up to date" in project.run(sys.executable, "-m", "dvc", "status")


CHECKED_OUT = ["models/hypercnn", "metrics/hypercnn", "plots/hypercnn", "reports"]


def test_dvc_repro_reruns_exactly_the_edited_experiment(project):
    # the results before the edit, committed: the checkout test below brings them back
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "results, first")
    project.first_results = digests(project.root, CHECKED_OUT)
    project.edit_params("hypercnn", lr=0.002, max_train_examples=5000)  # short epochs
    planned_by_snakemake = snakemake_jobs(project.run("snakemake", "-n", "--cores", "2"))
    ran = dvc_ran(project.run(sys.executable, "-m", "dvc", "repro"))
    # `sources` depends on the experiments (it readies their needs folders, hypermeta.dag)
    # and reruns in a second; its fingerprints unchanged, it reruns nothing else. The
    # Snakefile runs it as it builds its DAG, not as a job.
    assert ran == {"sources", "train@hypercnn", "evaluate@hypercnn", "visualize@hypercnn", "report"}
    assert planned_by_snakemake == rules(ran - {"sources"})
    assert "Nothing to be done" in project.run("snakemake", "-n", "--cores", "2")


def test_checking_out_an_earlier_commit_brings_back_all_its_results(project):
    """The README's promise: `git checkout <commit> && dvc checkout` brings back any
    earlier result: models, metrics, plots and the report, with `dvc status` clean. The
    earlier commit is the one before the `dvc repro` test's edit."""
    first = project.first_results
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "results, second")
    second = digests(project.root, CHECKED_OUT)
    changed = {path for path in first if first[path] != second.get(path)}
    assert {"models/hypercnn/model.pt", "metrics/hypercnn/metrics.json"} <= changed
    project.run("git", "checkout", "-q", "HEAD~1")
    project.run(sys.executable, "-m", "dvc", "checkout")
    assert digests(project.root, CHECKED_OUT) == first
    assert "Data and pipelines are up to date" in project.run(sys.executable, "-m", "dvc", "status")
    project.run("git", "checkout", "-q", "-")  # back to the branch, for the tests after
    project.run(sys.executable, "-m", "dvc", "checkout")
    assert digests(project.root, CHECKED_OUT) == second


def test_killed_training_resumes_and_completes(project):
    project.edit_params("cnn", epochs=4, max_train_examples=5000)  # short epochs
    checkpoint = project.root / "models" / "cnn" / "checkpoint.pt"
    training = subprocess.Popen(
        [sys.executable, "pipeline/train.py", "cnn"], cwd=project.root, env=project.env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    expected = resolve(load_params(project.root / "params.yaml"), "cnn").params_hash
    deadline = time.time() + 300
    epoch = 0
    while time.time() < deadline and training.poll() is None:
        if checkpoint.exists():  # the previous run's checkpoint has another config hash
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            epoch = state["epoch"] if state["config_hash"] == expected else 0
            if epoch >= 2:
                break
        time.sleep(0.5)
    os.killpg(training.pid, signal.SIGKILL)
    training.wait()
    assert 2 <= epoch < 4, f"training was not caught mid-way (epoch {epoch})"

    output = project.run("snakemake", "--cores", "2")
    assert re.search(r"cnn: resuming after epoch [23] of 4", output), output[-3000:]
    history = json.loads((project.root / "models" / "cnn" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert "Data and pipelines are up to date" in project.run(sys.executable, "-m", "dvc", "status")


def test_editing_a_method_file_reruns_only_that_methods_experiments(project):
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    experiments = params["experiments"]
    # pretrain.py runs in pretrain's experiments alone (that an edit reaches every file
    # importing it is test_sources's); leo_omniglot needs pretrain_omniglot's model
    using = [name for name, entry in experiments.items() if entry["method"] == "pretrain"]
    stages = ("train", "evaluate", "visualize")
    expected = {f"{stage}@{name}" for stage in stages for name in using} | {"report"}
    append_comment(project.root / "src" / "hypermeta" / "methods" / "pretrain.py")
    assert dvc_stale(project) == expected
    # and, their models retrained, what needs them (leo_omniglot needs pretrain_omniglot)
    needing = {
        (name, needed) for name, entry in experiments.items()
        for needed in entry.get("needs", []) if needed in using
    }  # fmt: skip
    assert needing, "no experiment needs one that runs pretrain.py"
    downstream = {f"needs@{name}+{needed}" for name, needed in needing}
    downstream |= {f"{stage}@{name}" for stage in stages for name, _ in needing}
    assert snakemake_jobs(project.run("snakemake", "-n", "--cores", "2")) == rules(
        expected | downstream
    )
    assert dvc_ran(project.run(sys.executable, "-m", "dvc", "repro")) == expected | downstream
    assert "Nothing to be done" in project.run("snakemake", "-n", "--cores", "2")


def test_editing_the_report_reruns_only_the_report(project):
    append_comment(project.root / "src" / "hypermeta" / "report.py")
    assert dvc_stale(project) == {"report"}
    assert snakemake_jobs(project.run("snakemake", "--cores", "2")) == {"report"}
    assert "Data and pipelines are up to date" in project.run(sys.executable, "-m", "dvc", "status")
