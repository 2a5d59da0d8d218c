"""Experiment-to-experiment dependencies (`needs:`): checked in params.yaml, and in the one
DAG of both engines the needing experiment's training runs after, and depends on, the
models it needs (dvc.yaml through needs.yaml, hypermeta.dag)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import yaml

from hypermeta.config import read_params
from hypermeta.dag import check_needs_file, dvc_stages, needs_text, snakemake_inputs, write_needs
from hypermeta.errors import HypermetaError

ROOT = Path(__file__).resolve().parents[2]


def params_with(experiments: dict, datasets: dict | None = None) -> dict:
    return {
        "profile": "quick",
        "profiles": {"quick": "seconds", "paper": "hours"},
        "data": {"datasets": datasets or {"quick": ["mnist"], "paper": ["mnist"]}},
        "experiments": experiments,
    }


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


CHAIN = {
    "base": {"method": "cnn", "dataset": "mnist"},
    "middle": {"method": "cnn", "dataset": "mnist", "needs": ["base"]},
    "top": {"method": "hypercnn", "dataset": "mnist", "needs": ["middle", "base"]},
    "alone": {"method": "cnn", "dataset": "mnist"},
}


@pytest.mark.parametrize(
    ("experiments", "datasets", "message"),
    [
        (
            {"a": {"method": "cnn", "dataset": "mnist", "needs": ["nope"]}},
            None,
            "experiments.a.needs names 'nope', which is not an experiment",
        ),
        (
            {
                "a": {"method": "cnn", "dataset": "mnist", "needs": ["b"]},
                "b": {"method": "cnn", "dataset": "mnist", "needs": ["c"]},
                "c": {"method": "cnn", "dataset": "mnist", "needs": ["a"]},
            },
            None,
            "form a cycle (a → b → c → a)",
        ),
        (
            {"a": {"method": "cnn", "dataset": "mnist", "needs": ["a"]}},
            None,
            "form a cycle (a → a)",
        ),
        (
            {
                "a": {"method": "cnn", "dataset": "mnist", "needs": ["b"]},
                "b": {"method": "cnn", "dataset": "omniglot"},
            },
            {"quick": ["mnist"], "paper": ["mnist", "omniglot"]},
            "needs 'b', which cannot run under profile 'quick'",
        ),
        (  # a model trained on one cut of Omniglot may have seen the other's test classes
            {
                "a": {"method": "protonet", "dataset": "omniglot", "needs": ["b"]},
                "b": {"method": "protonet", "dataset": "omniglot", "split": "vinyals"},
            },
            {"quick": ["omniglot"], "paper": ["omniglot"]},
            "is cut by split 'vinyals', not a's 'lake'",
        ),
    ],
)
def test_bad_needs_are_one_sentence(tmp_path, experiments, datasets, message):
    with pytest.raises(HypermetaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_params(write(tmp_path, params_with(experiments, datasets)))


def test_a_profile_cannot_change_needs(tmp_path):
    from hypermeta.experiments import resolve

    experiments = {
        **CHAIN,
        "alone": {"method": "cnn", "dataset": "mnist", "profiles": {"quick": {"needs": ["base"]}}},
    }
    params = read_params(write(tmp_path, params_with(experiments)))
    with pytest.raises(HypermetaError, match="a profile cannot change what an experiment needs"):
        resolve(params, "alone")


def test_the_stage_context_hands_out_only_needed_models(tmp_path, monkeypatch):
    from hypermeta.engine.base import StageContext
    from hypermeta.experiments import resolve

    monkeypatch.chdir(tmp_path)
    params = read_params(write(tmp_path, params_with(CHAIN)))
    ctx = StageContext(resolve(params, "top"), *(Path("x"),) * 4, tracker=None)
    with pytest.raises(HypermetaError, match="train 'base' first"):
        ctx.needed_model("base")
    (tmp_path / "models/base").mkdir(parents=True)
    (tmp_path / "models/base/model.pt").write_bytes(b"")
    assert ctx.needed_model("base") == Path("models/base/model.pt")
    with pytest.raises(HypermetaError, match="does not list it under needs"):
        ctx.needed_model("alone")


@pytest.fixture(scope="module")
def chain_project(tmp_path_factory) -> Path:
    """The project's dvc.yaml over CHAIN, needs.yaml written, in a DVC repository."""
    root = tmp_path_factory.mktemp("needs")
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    write_needs(read_params(write(root, params_with(CHAIN))), root)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


def test_dvc_trains_the_needed_models_first_and_depends_on_them(chain_project, monkeypatch):
    from dvc.repo import Repo

    monkeypatch.chdir(chain_project)
    with Repo(".") as repo:
        graph = repo.index.graph  # edges from a stage to those it depends on
        order = [stage.addressing for stage in reversed(list(nx.topological_sort(graph)))]
    assert {"needs@middle+base", "needs@top+middle", "needs@top+base"} <= set(order)
    for before, after in [
        ("train@base", "needs@middle+base"),
        ("needs@middle+base", "train@middle"),
        ("train@middle", "needs@top+middle"),
        ("needs@top+middle", "train@top"),
        ("needs@top+base", "train@top"),
    ]:
        assert order.index(before) < order.index(after), (before, after)
    assert not any(name.startswith("needs@alone") for name in order)

    stages = {stage.name: stage for stage in dvc_stages()}
    assert "needs/top" in stages["train@top"].deps
    assert stages["needs@top+base"].deps == ["models/base/model.pt"]
    assert stages["needs@top+base"].experiment is None
    assert "needs/alone" in stages["train@alone"].deps  # empty: it needs none
    # Snakemake's rule inputs: the edge files, so its jobs run in the same order
    inputs = snakemake_inputs(stages["train@top"], list(stages.values()))
    assert {"needs/top/middle.json", "needs/top/base.json"} <= set(inputs)
    alone = snakemake_inputs(stages["train@alone"], list(stages.values()))
    assert not any(path.startswith("needs/") for path in alone)


def test_an_experiment_that_needs_none_needs_no_rewritten_needs_file(
    chain_project, tmp_path, monkeypatch
):
    """DVC plans a new experiment's stages from params.yaml alone; one with a new `needs:`
    is caught by the `sources` stage, which rewrites needs.yaml and asks for a rerun."""
    from dvc.repo import Repo

    from hypermeta.dag import prepare_needs

    project = tmp_path / "project"
    shutil.copytree(chain_project, project)
    monkeypatch.chdir(project)
    added = {**CHAIN, "extra": {"method": "cnn", "dataset": "mnist"}}
    params = read_params(write(project, params_with(added)))
    with Repo(".") as repo:
        assert "train@extra" in {stage.addressing for stage in repo.index.stages}
    prepare_needs(params, project)  # needs.yaml current: only the folders are made
    assert (project / "needs/extra").is_dir() and not any((project / "needs/extra").iterdir())

    added["extra"]["needs"] = ["base"]
    params = read_params(write(project, params_with(added)))
    with pytest.raises(HypermetaError, match="rewritten now: run `dvc repro` again"):
        prepare_needs(params, project)
    check_needs_file(params, project)
    prepare_needs(params, project)
    with Repo(".") as repo:
        assert "needs@extra+base" in {stage.addressing for stage in repo.index.stages}


def test_needs_file_must_match_params(tmp_path):
    params = read_params(write(tmp_path, params_with(CHAIN)))
    with pytest.raises(HypermetaError, match="run `python -m hypermeta.dag needs`"):
        check_needs_file(params, tmp_path)
    assert write_needs(params, tmp_path) and not write_needs(params, tmp_path)
    check_needs_file(params, tmp_path)
    assert "top+base" in needs_text(params)


def test_the_projects_needs_file_is_current():
    check_needs_file(read_params(ROOT / "params.yaml"), ROOT)


def test_a_paper_check_runs_what_an_experiment_needs_first():
    from hypermeta.config import load_raw
    from hypermeta.paper_check import with_needs

    raw = load_raw(ROOT / "params.yaml")
    assert with_needs(raw, ["leo_omniglot", "cnn"]) == ["pretrain_omniglot", "leo_omniglot", "cnn"]
    assert with_needs({"experiments": CHAIN}, ["top", "base"]) == ["base", "middle", "top"]
