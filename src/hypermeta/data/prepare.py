"""The split stage: decode raw files once into uint8 tensors, one `<split>.pt` per
split, plus `manifest.json` (counts, seed, checksums). Nothing decodes in training.

A dataset cut in several ways (`DatasetSpec.split_protocols`, e.g. Omniglot's Lake and
Vinyals splits) is decoded once and written once per protocol, each to its own folder
(`prepared_name`), so experiments on different protocols share one split stage."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hypermeta.atomic import torch_load, torch_save, write_json
from hypermeta.config import SplitConfig
from hypermeta.data.download import md5_of
from hypermeta.data.registry import DATASETS, DatasetSpec
from hypermeta.errors import HypermetaError


@dataclass
class Prepared:
    splits: dict[str, dict[str, torch.Tensor]]
    info: dict[str, Any]


# One Prepared, or for a dataset with split protocols one per prepared folder name.
Preparer = Callable[[DatasetSpec, Path, SplitConfig], Prepared | dict[str, Prepared]]
PREPARERS: dict[str, Preparer] = {}
# modules that register a preparer for their reader
READER_MODULES = ("idx", "omniglot", "sine", "text")


def preparer(reader: str) -> Callable[[Preparer], Preparer]:
    def register(function: Preparer) -> Preparer:
        PREPARERS[reader] = function
        return function

    return register


def seeded_holdout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded permutation of range(n) cut into (kept, held out), each sorted."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(round(n * fraction))
    return order[cut:].sort().values, order[:cut].sort().values


def tensor_md5(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.md5()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def prepare(
    dataset: str, raw_root: Path, prepared_root: Path, split: SplitConfig
) -> dict[str, dict]:
    """Prepare `dataset` from its raw files: prepared folder name → its manifest."""
    for module in READER_MODULES:
        importlib.import_module(f"hypermeta.data.{module}")
    spec = DATASETS[dataset]
    raw_dir = raw_root / dataset
    missing = [f.name for f in spec.files if not (raw_dir / f.name).exists()]
    if missing:
        raise HypermetaError(
            f"{raw_dir} lacks {', '.join(missing)}; run the download stage first "
            "(python pipeline/download.py)."
        )
    made = PREPARERS[spec.reader](spec, raw_dir, split)
    folders = made if isinstance(made, dict) else {dataset: made}
    raw_md5 = {f.name: md5_of(raw_dir / f.name) for f in spec.files}
    manifests = {}
    for folder, prepared in folders.items():
        out_dir = prepared_root / folder
        for name, tensors in prepared.splits.items():
            torch_save(out_dir / f"{name}.pt", tensors)
        manifests[folder] = {
            "dataset": dataset,
            "description": spec.description,
            "split": split.model_dump(),
            "counts": {name: len(next(iter(t.values()))) for name, t in prepared.splits.items()},
            "raw_md5": raw_md5,
            "tensor_md5": {name: tensor_md5(t) for name, t in prepared.splits.items()},
            **prepared.info,
        }
        write_json(out_dir / "manifest.json", manifests[folder])
    return manifests


def load_manifest(data_dir: Path) -> dict[str, Any]:
    import json

    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise HypermetaError(
            f"{path} not found; run the split stage first (python pipeline/split.py)."
        )
    return json.loads(path.read_text())


def load_split(data_dir: Path, split: str) -> dict[str, torch.Tensor]:
    path = Path(data_dir) / f"{split}.pt"
    if not path.exists():
        raise HypermetaError(
            f"{path} not found; run the split stage first (python pipeline/split.py)."
        )
    return torch_load(path, "delete it and run the split stage again")
