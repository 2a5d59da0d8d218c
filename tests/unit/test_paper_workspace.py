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
    with pytest.raises(HypermetaError, match="sized for a GPU.*--set.*resources.runtime"):
        estimate(exp, {}, gpu=False)
    assert "no estimate" in estimate(exp, {"train.iterations": 60}, gpu=False)
    assert f"about {exp.resources.runtime} min" in estimate(exp, {}, gpu=True)
    assert "as --set gives it" in estimate(exp, {"resources.runtime": exp.resources.runtime}, True)
    assert "as --set gives it" in estimate(exp, {"resources.runtime": 90}, gpu=False)  # its own


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


def test_dropping_the_augmentation_drops_the_model_only_it_needed():
    raw = load_raw(ROOT / "params.yaml")
    off = {"eval.augment": None, "resources.threads": 2}
    assert with_needs(raw, ["protonet_omniglot"], off) == ["protonet_omniglot"]
    # the twin trains on the VAE's generated tasks too: that need stays
    twin = with_needs(raw, ["protonet_omniglot_taskgen"], off)
    assert "vae_omniglot" in twin and twin[-1] == "protonet_omniglot_taskgen"
    params = workspace_params(raw, ["protonet_omniglot"], off, ROOT)
    assert params["experiments"]["protonet_omniglot"]["needs"] == []
    path = ROOT / "params.yaml"
    exp = resolve(load_params(path), "protonet_omniglot", "paper")
    assert exp.eval.augment is not None  # params.yaml itself unchanged


def test_only_overrides_that_change_the_papers_scale_make_a_record_partial():
    from hypermeta.paper_check import is_partial

    assert not is_partial({"resources.threads": 2, "eval.augment": None})
    assert is_partial({"resources.threads": 2, "train.iterations": 2000})
