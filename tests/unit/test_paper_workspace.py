"""paper-check's pieces that need no run: its overrides, the workspace's params.yaml,
and refusing a GPU-sized paper profile on a CPU without being told how to cut it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from hypermeta.config import load_raw
from hypermeta.errors import HypermetaError
from hypermeta.experiments import load_params, resolve
from hypermeta.paper_check import (
    estimate,
    parse_overrides,
    set_arguments,
    with_needs,
    workspace_lock,
    workspace_params,
)


def test_overrides_are_section_keys_with_yaml_values():
    assert parse_overrides(
        ["train.iterations=6000", "eval.shots=[5, 10]", "resources.threads=2"]
    ) == {
        "train.iterations": 6000,
        "eval.shots": [5, 10],
        "resources.threads": 2,
    }
    overrides = {"train.iterations": 6000, "eval.shots": [5, 10], "train.lr_schedule": "step"}
    assert (
        parse_overrides([a.removeprefix("--set ") for a in set_arguments(overrides)]) == overrides
    )
    for bad in ("iterations=6000", "data.seed=1", "train.lr"):
        with pytest.raises(HypermetaError, match="SECTION.KEY=VALUE"):
            parse_overrides([bad])


def test_the_workspace_holds_the_named_experiments_at_paper_scale_and_their_data(tmp_path):
    raw = load_raw(ROOT / "params.yaml")
    overrides = {"train.iterations": 60}
    names = with_needs(raw, ["protonet_omniglot"])  # its eval.augment's VAE first
    assert names == ["vae_omniglot", "protonet_omniglot"]
    params = workspace_params(raw, names, overrides, ROOT)
    assert params["profile"] == "paper" and list(params["experiments"]) == names
    assert list(params["references"]) == ["protonet_omniglot"]
    assert params["data"]["datasets"]["paper"] == ["omniglot"]
    assert raw["experiments"]["protonet_omniglot"]["profiles"].get("paper") is None  # a copy
    path = tmp_path / "params.yaml"
    path.write_text(__import__("yaml").safe_dump(params))
    exp = resolve(load_params(path), "protonet_omniglot")
    assert exp.profile == "paper" and exp.train.iterations == 60
    assert exp.train.n_way == raw["experiments"]["protonet_omniglot"]["train"]["n_way"]


def test_a_gpu_sized_paper_profile_is_refused_on_a_cpu_unless_cut():
    exp = resolve(load_params(ROOT / "params.yaml"), "protonet_omniglot", "paper")
    assert exp.resources.gpu > 0
    with pytest.raises(HypermetaError, match="sized for a GPU.*--set"):
        estimate(exp, {}, gpu=False)
    assert "no estimate" in estimate(exp, {"train.iterations": 60}, gpu=False)
    assert f"about {exp.resources.runtime} min" in estimate(exp, {}, gpu=True)
    assert "as --set gives it" in estimate(exp, {"resources.runtime": exp.resources.runtime}, True)


def test_a_second_paper_check_in_the_same_project_is_refused_while_one_runs(tmp_path):
    other = (
        "from pathlib import Path\n"
        "from hypermeta.paper_check import workspace_lock\n"
        f"with workspace_lock(Path({str(tmp_path)!r})): pass\n"
    )
    with workspace_lock(tmp_path):
        refused = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True)
    assert refused.returncode != 0 and "another paper-check is running" in refused.stderr
    done = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # released when the first one ends
