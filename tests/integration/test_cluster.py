"""Past one machine: a subset of the quick pipeline on a real one-node SLURM cluster
(scripts/slurm-local.sh), its stages logging to an `mlflow server` on 127.0.0.1, and its
results pushed to a DVC remote and brought back in a fresh clone.

The subset is the quick profile's download, split and report with its two cheapest
experiments, maml_sine and metasgd_sine, in a project copy whose params.yaml holds only
those (so that the report, `dvc status` and `snakemake -n` see a whole pipeline); mnist
stays among its data sets so that download and split move real data. The quick pipeline
test (test_pipeline.py) already costs 14 minutes of `make test`, so the DVC round trip runs
on this subset's project after its cluster run rather than after the quick pipeline.

Cost (2026-12-02, 2 cores shared): 5:10 wall and about 145 CPU-s for the file, of which
the SLURM jobs take about 65 (each job starts Snakemake twice, 6-8 CPU-s), the local
reference run 35 and the DVC round trip's `dvc repro` of one experiment 20; under the
heaviest load seen here, 12 minutes wall.

The tests share their projects and run in file order. Every cluster run has a timeout: a
status poll that never sees its jobs end would otherwise wait forever."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT
from scratch_project import Project, digests, mlflow_server, snakemake_jobs, subset_project

from hypermeta.experiments import load_params, resolve

pytestmark = pytest.mark.integration
SCRIPT = ROOT / "scripts" / "slurm-local.sh"
CANNOT_SET_UP = 3  # the script's exit status where SLURM cannot be installed here
SUBSET = ("maml_sine", "metasgd_sine")
CLUSTER_TIMEOUT_S = 900
# The profile waits 20 s before its first squeue poll; here jobs are seconds long.
SLURM_RUN = ("snakemake", "--profile", "profiles/slurm",
             "--slurm-init-seconds-before-status-checks", "5")  # fmt: skip
# What the Snakefile asks for a stage that belongs to no experiment (download, split, report)
STAGE_RESOURCES = {"mem_mb": 2000, "runtime": 30, "threads": 1}


def cluster_subset(root: Path, env: dict[str, str] | None = None) -> Project:
    """The subset's project; mnist stays among its data sets so that download and split
    move real data, and metasgd_sine asks for resources of its own."""
    # the two ask for the same; a request of its own shows each job asks for its experiment's
    own_request = {"resources": {"mem_mb": 3000, "runtime": 12}}
    return subset_project(root, SUBSET, ["mnist", "sine"], env, {"metasgd_sine": own_request})


def timed(project: Project, *args: str, timeout: int = CLUSTER_TIMEOUT_S) -> tuple[str, float]:
    began = time.perf_counter()
    output = project.run(*args, timeout=timeout)
    return output, time.perf_counter() - began


@pytest.fixture(scope="module")
def cluster():
    """The one-node cluster, started by the repository's script and stopped after the last
    test of this file, whatever happened."""
    began = time.perf_counter()
    started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
    if started.returncode == CANNOT_SET_UP:
        pytest.skip(started.stderr.strip())
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        print(f"\ncluster start: {time.perf_counter() - began:.1f} s")
        yield
    finally:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """An `mlflow server` as a user starts one for a cluster: its store on its own machine,
    artifacts served over HTTP (compute nodes share no folder with it)."""
    store = tmp_path_factory.mktemp("mlflow")
    with mlflow_server(
        "--workers", "1", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"),
    ) as url:  # fmt: skip
        yield url


@pytest.fixture(scope="module")
def on_cluster(cluster, tracking_server, tmp_path_factory) -> tuple[Project, str]:
    """The subset run through `snakemake --profile profiles/slurm`: the project, its output."""
    project = cluster_subset(
        tmp_path_factory.mktemp("on-cluster"), {"MLFLOW_TRACKING_URI": tracking_server}
    )
    output, seconds = timed(project, *SLURM_RUN)
    print(f"subset through SLURM: {seconds:.0f} s")
    return project, output


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Project:
    """The same subset run by plain `snakemake` on this machine, logging nothing."""
    project = cluster_subset(tmp_path_factory.mktemp("local"), {"HYPERMETA_TRACKING": "off"})
    _, seconds = timed(project, "snakemake", "--cores", "2")
    print(f"subset locally: {seconds:.0f} s")
    return project


def job_records(workdir: Path) -> list[dict[str, str]]:
    """The cluster's records of the jobs run in `workdir` (kept MinJobAge after they end)."""
    shown = subprocess.run(
        ["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, check=True
    ).stdout
    records = [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in shown.splitlines()]
    return [record for record in records if record.get("WorkDir") == str(workdir)]


def wanted_resources(project: Project, rule: str) -> dict[str, int]:
    stage, _, experiment = rule.partition("__")
    if not experiment:
        return STAGE_RESOURCES
    return resolve(load_params(project.root / "params.yaml"), experiment).resources.model_dump()


def test_every_job_goes_through_sbatch_asking_for_its_resources(on_cluster):
    project, output = on_cluster
    assert "steps (100%) done" in output, output[-3000:]
    rules = snakemake_jobs(output)
    assert rules == {"download", "split", "report"} | {
        f"{stage}__{name}" for stage in ("train", "evaluate", "visualize") for name in SUBSET
    }
    assert "localrule" not in output.replace("localrule all:", "")  # no job ran beside
    records = job_records(project.root)
    by_rule = {record["Comment"].removeprefix("rule_"): record for record in records}
    assert len(records) == len(rules) and set(by_rule) == rules, [r["Comment"] for r in records]
    for rule, record in by_rule.items():
        assert record["JobState"] == "COMPLETED" and record["BatchFlag"] == "1", record
        wanted = wanted_resources(project, rule)
        runtime = wanted["runtime"]
        assert record["MinMemoryNode"] == f"{wanted['mem_mb']}M", (rule, record)
        assert record["TimeLimit"] == f"{runtime // 60:02d}:{runtime % 60:02d}:00", (rule, record)
        assert record["CPUs/Task"] == str(wanted["threads"]), (rule, record)
        assert "gres/gpu" not in record.get("TRES", ""), (rule, record)  # gpu: 0 asks for none
    assert by_rule["train__metasgd_sine"]["MinMemoryNode"] == "3000M"
    assert by_rule["train__maml_sine"]["MinMemoryNode"] == "4000M"


def test_stages_on_compute_nodes_log_to_the_tracking_server(on_cluster, tracking_server):
    from mlflow.tracking import MlflowClient

    project, _ = on_cluster
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("hypermeta")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    names = {run.info.run_name: run for run in runs}
    stages = {"download", "split", "report"} | {
        f"{name} · {stage}" for stage in ("train", "evaluate", "visualize") for name in SUBSET
    }
    assert stages <= set(names), sorted(names)
    assert all(names[name].info.status == "FINISHED" for name in stages)
    for name in SUBSET:
        metrics = json.loads((project.root / "metrics" / name / "metrics.json").read_text())
        evaluate = names[f"{name} · evaluate"]
        assert metrics["mlflow_run_id"] == evaluate.info.run_id
        assert evaluate.data.metrics["mse_k10"] == pytest.approx(metrics["mse_k10"])
        # the trained model went through the server's artifact proxy, not a shared folder
        train = names[f"{name} · train"].info.run_id
        assert "saved/model.pt" in [a.path for a in client.list_artifacts(train, "saved")]


CLOCK = {"mlflow_run_id", "seconds"}  # a run's id, the seconds a curve's row took


def without_clock(value: Any) -> Any:
    """`value` (a loaded JSON or torch file) with its tensors as lists and CLOCK's keys left
    out, so that two files compare by what they hold."""
    if isinstance(value, dict):
        return {k: without_clock(v) for k, v in value.items() if k not in CLOCK}
    if isinstance(value, list | tuple):
        return [without_clock(item) for item in value]
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), value.tolist())
    return value


def contents(root: Path, paths: list[str]) -> dict[str, Any]:
    """What each file under `paths` holds, without CLOCK (.pt files as torch loads them;
    their bytes also hold the name of the temporary file they were written to)."""
    found = {}
    for name in digests(root, paths):
        path = root / name
        if path.suffix == ".pt":
            found[name] = without_clock(torch.load(path, map_location="cpu", weights_only=False))
        elif path.suffix == ".json":
            found[name] = without_clock(json.loads(path.read_text()))
        else:
            found[name] = digests(root, [name])[name]
    return found


def test_outputs_equal_a_local_run_of_the_same_subset(on_cluster, local):
    """Seeded, one thread per job: the downloaded and prepared data, the trained weights,
    every metric and every training-curve value come out the same on the cluster as on
    this machine. Not compared: run ids and the seconds a curve's rows took (clock), and
    the plots and the report (figures rendered from these same numbers)."""
    project, _ = on_cluster
    same = [
        "data",
        *(f"models/{name}/{f}" for name in SUBSET for f in ("model.pt", "history.json")),
    ]
    same += [f"metrics/{name}" for name in SUBSET]
    ours, theirs = contents(project.root, same), contents(local.root, same)
    assert len(ours) > 10 and ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == theirs[name], name


def test_a_failing_job_fails_the_run_naming_its_slurm_log(cluster, local):
    """A job that fails on its node (here: a GPU asked for where none is) fails the run,
    and Snakemake's message names the job's SLURM log, which holds the stage's error."""
    local.edit_params("metasgd_sine", device="cuda")
    result = subprocess.run(
        [*SLURM_RUN, "--retries", "0"], cwd=local.root, env={**local.env,
        "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=CLUSTER_TIMEOUT_S,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    logs = re.findall(r"\.snakemake/slurm_logs/rule_train__metasgd_sine/\d+\.log", output)
    assert logs, output[-3000:]
    log = (local.root / logs[0]).read_text()
    assert "train.device is 'cuda' but PyTorch sees no CUDA GPU" in log, log[-2000:]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_results_come_back_from_a_dvc_remote(on_cluster, tmp_path_factory):
    """The round trip a user relies on: the cluster run's dvc.lock committed and its
    outputs pushed; a fresh clone pulls data, models and metrics back and has nothing to
    rerun; after a parameter change, the earlier commit's model comes back byte for byte."""
    project, _ = on_cluster
    remote = tmp_path_factory.mktemp("dvc-remote")
    project.run(sys.executable, "-m", "dvc", "remote", "add", "-d", "storage", str(remote))
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "results of the cluster run")
    _, pushed = timed(project, sys.executable, "-m", "dvc", "push")

    clone = Project(tmp_path_factory.mktemp("clone") / "project")
    clone.env["HYPERMETA_TRACKING"] = "off"
    subprocess.run(["git", "clone", "-q", str(project.root), str(clone.root)], check=True)
    _, pulled = timed(clone, sys.executable, "-m", "dvc", "pull")
    print(f"dvc push: {pushed:.1f} s, dvc pull into a fresh clone: {pulled:.1f} s")
    results = ["data", "models", "metrics", "plots", "reports"]
    versioned = {  # but Snakemake's marks of a folder's date, which .dvcignore leaves out
        name: md5 for name, md5 in digests(project.root, results).items()
        if not name.endswith(".snakemake_timestamp")
    }  # fmt: skip
    assert digests(clone.root, results) == versioned
    # pulled files carry the pull's dates, which Snakemake goes by; DVC's hashes say they
    # are current, and `snakemake --touch` redates them in the DAG's order (README)
    clone.run("snakemake", "--touch", "--cores", "1", "--no-hooks")
    assert "Data and pipelines are up to date" in clone.run(sys.executable, "-m", "dvc", "status")
    assert "Nothing to be done" in clone.run("snakemake", "-n", "--cores", "1")
    assert not clone.run("git", "status", "--porcelain")

    model = clone.root / "models" / "maml_sine" / "model.pt"
    first = model.read_bytes()
    clone.edit_params("maml_sine", meta_iterations=500)
    clone.run(sys.executable, "-m", "dvc", "repro", timeout=CLUSTER_TIMEOUT_S)
    clone.run("git", "commit", "-qam", "maml_sine, fewer iterations")
    assert model.read_bytes() != first
    clone.run("git", "checkout", "-q", "HEAD~1")
    clone.run(sys.executable, "-m", "dvc", "checkout")
    assert model.read_bytes() == first
    assert "Data and pipelines are up to date" in clone.run(sys.executable, "-m", "dvc", "status")
