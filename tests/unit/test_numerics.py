"""A stage's numbers do not depend on how it is started: Snakemake gives each job
OMP_NUM_THREADS=1, `dvc repro` and a hand run leave torch a thread per core."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from conftest import ROOT
from unit.helpers import write_params, write_prepared


def train_cnn(folder: Path, threads: str | None) -> dict[str, torch.Tensor]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env |= {"PYTHONPATH": str(ROOT / "src"), "HYPERMETA_TRACKING": "off"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    command = [sys.executable, "-m", "hypermeta.cli", "train", "cnn"]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return torch.load(folder / "models/cnn/model.pt", weights_only=False)


def test_training_gives_the_same_bytes_however_many_threads_the_launcher_sets(tmp_path):
    source = tmp_path / "project"
    source.mkdir()
    write_params(source)
    write_prepared(source / "data/prepared/fashion_mnist", n_train=512)
    saved = {}
    for threads in ("1", "2", None):  # Snakemake's, another launcher's, torch's default
        folder = tmp_path / f"threads-{threads}"
        shutil.copytree(source, folder)
        saved[threads] = train_cnn(folder, threads)
    for threads in ("2", None):
        for name, tensor in saved["1"]["state_dict"].items():
            assert torch.equal(saved[threads]["state_dict"][name], tensor), (threads, name)
        losses = [row["train_loss"] for row in saved[threads]["history"]]
        assert losses == [row["train_loss"] for row in saved["1"]["history"]], threads
