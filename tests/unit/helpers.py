"""Small real inputs for unit tests: a params file and a learnable prepared dataset."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from hypermeta.atomic import torch_save, write_json
from hypermeta.experiments import load_params
from hypermeta.results import PaperRecord

BASE_PARAMS = {
    "profile": "quick",
    "profiles": {"quick": "tests", "paper": "tests"},
    "data": {"datasets": {"quick": ["fashion_mnist"], "paper": ["mnist"]}},
    "experiments": {
        "cnn": {
            "method": "cnn",
            "dataset": "mnist",
            "model": {"filters": 4, "kernel_size": 3},
            "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "device": "cpu"},
            "profiles": {"quick": {"dataset": "fashion_mnist"}},
        }
    },
}

# Two continual learners of one report group (fashion_mnist in the quick profile).
TOY_CONTINUAL_GROUP = {
    name: {
        "method": method,
        "dataset": "mnist",
        "group": "toy_cl",
        "profiles": {"quick": {"dataset": "fashion_mnist"}},
    }
    for name, method in (("hnet_toy", "hnet"), ("ewc_toy", "ewc"))
}


def write_params(folder: Path, params: dict | None = None):
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params or BASE_PARAMS))
    return path


def load(folder: Path, params: dict | None = None):
    return load_params(write_params(folder, params))


def learnable_images(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Class c lights a 4×4 patch in cell c of a 28×28 image, plus noise: easy to learn."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = torch.randint(0, 60, (n, 1, 28, 28), generator=generator, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        row, col = divmod(c, 5)
        images[i, 0, 4 + 8 * row : 8 + 8 * row, 2 + 5 * col : 6 + 5 * col] = 255
    return {"images": images, "labels": labels}


def write_prepared(folder: Path, n_train: int = 1024) -> Path:
    for split, n, seed in (("train", n_train, 0), ("val", 256, 1), ("test", 512, 2)):
        torch_save(folder / f"{split}.pt", learnable_images(n, seed))
    write_json(
        folder / "manifest.json",
        {"image_shape": [1, 28, 28], "num_classes": 10, "mean": 0.2, "std": 0.3, "tensor_md5": {}},
    )
    return folder


def untimed(history: list[dict]) -> list[dict]:
    """A training history without its wall-clock numbers: what a resumed run must repeat
    exactly (every loss, accuracy and learning rate of every row)."""
    return [
        {
            key: value
            for key, value in row.items()
            if "seconds" not in key and "per_second" not in key
        }
        for row in history
    ]


def same_trained_weights(straight: Path, resumed: Path) -> tuple[dict, dict]:
    """The model files of an uninterrupted and a resumed run, after asserting that their
    weights are equal to the bit."""
    expected = torch.load(straight, weights_only=True)
    got = torch.load(resumed, weights_only=True)
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    for name, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], value), name
    return expected, got


def paper_record(experiment: str, commit: str, **fields) -> PaperRecord:
    """A record of a paper-scale run as `hypermeta paper-check` writes it (results/), with
    `fields` set over a finished, full-scale run of `experiment` on one CPU thread."""
    return PaperRecord.model_validate(
        {
            "experiment": experiment,
            "method": "cnn",
            "dataset": "mnist",
            "partial": False,
            "metrics": {},
            "published": [],
            "git_commit": commit,
            "device": "cpu",
            "threads": 1,
            "wall_seconds": 42.0,
            "resumed": False,
            "data_md5": {"mnist/test.pt": "0" * 32},
            "finished": "2026-12-02T10:30:00+00:00",
            "mlflow_run_ids": {"train": "r1", "evaluate": "r2"},
            "command": f"hypermeta paper-check {experiment}",
        }
        | fields
    )
