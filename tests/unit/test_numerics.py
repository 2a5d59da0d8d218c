"""A stage's numbers do not depend on how it is started: Snakemake gives each job
OMP_NUM_THREADS=1, `dvc repro` and a hand run leave torch a thread per core."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from unit.helpers import write_params, write_prepared


def run_cnn(folder: Path, threads: str | None) -> dict[str, torch.Tensor]:
    """Train, evaluate and visualize `cnn` under a launcher's thread setting."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env |= {"PYTHONPATH": str(ROOT / "src"), "HYPERMETA_TRACKING": "off"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    for stage in ("train", "evaluate", "visualize"):
        command = [sys.executable, "-m", "hypermeta.cli", stage, "cnn"]
        result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    return torch.load(folder / "models/cnn/model.pt", weights_only=True)


def untimed_metrics(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics/cnn/metrics.json").read_text())
    return {k: v for k, v in metrics.items() if "seconds" not in k}


@pytest.mark.slow
def test_stages_give_the_same_numbers_and_figures_however_many_threads_the_launcher_sets(tmp_path):
    source = tmp_path / "project"
    source.mkdir()
    write_params(source)
    write_prepared(source / "data/prepared/fashion_mnist", n_train=512)
    saved = {}
    # Snakemake's, torch's default (a thread per core) and, where that is not 2, another
    # launcher's: on a 2-core host "2" is the default again, three more stage starts
    launchers = ["1", None] + (["2"] if os.cpu_count() != 2 else [])
    for threads in launchers:
        folder = tmp_path / f"threads-{threads}"
        shutil.copytree(source, folder)
        saved[threads] = run_cnn(folder, threads)
    for threads in launchers[1:]:
        folder, first = tmp_path / f"threads-{threads}", tmp_path / "threads-1"
        assert untimed_metrics(folder) == untimed_metrics(first), threads
        plots = sorted(p.name for p in (first / "plots/cnn").glob("*.png"))
        assert plots and plots == sorted(p.name for p in (folder / "plots/cnn").glob("*.png"))
        for name in plots:  # a re-drawn figure is the same file, byte for byte
            assert (folder / "plots/cnn" / name).read_bytes() == (
                first / "plots/cnn" / name
            ).read_bytes(), (threads, name)
        for name, tensor in saved["1"]["state_dict"].items():
            assert torch.equal(saved[threads]["state_dict"][name], tensor), (threads, name)
        losses = [row["train_loss"] for row in saved[threads]["history"]]
        assert losses == [row["train_loss"] for row in saved["1"]["history"]], threads
