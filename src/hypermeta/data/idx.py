"""IDX files (MNIST, Fashion-MNIST): parsed once here, at the split stage."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from hypermeta.config import SplitConfig
from hypermeta.data.prepare import Prepared, preparer, seeded_holdout
from hypermeta.data.registry import DatasetSpec
from hypermeta.errors import HypermetaError

_DTYPES = {0x08: np.uint8}

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def read_idx(path: Path) -> torch.Tensor:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise HypermetaError(f"{path} is not an unsigned-byte IDX file; delete it and re-download.")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise HypermetaError(f"{path} is truncated; delete it and re-download.")
    return torch.from_numpy(array.reshape(shape).copy())


@preparer("idx")
def prepare_idx(spec: DatasetSpec, raw_dir: Path, split: SplitConfig) -> Prepared:
    train_images = read_idx(raw_dir / "train-images-idx3-ubyte.gz").unsqueeze(1)
    train_labels = read_idx(raw_dir / "train-labels-idx1-ubyte.gz").long()
    test_images = read_idx(raw_dir / "t10k-images-idx3-ubyte.gz").unsqueeze(1)
    test_labels = read_idx(raw_dir / "t10k-labels-idx1-ubyte.gz").long()
    train_idx, val_idx = seeded_holdout(len(train_labels), split.val_fraction, split.seed)
    pixels = train_images[train_idx].float() / 255
    classes = FASHION_CLASSES if spec.name == "fashion_mnist" else [str(d) for d in range(10)]
    return Prepared(
        splits={
            "train": {"images": train_images[train_idx], "labels": train_labels[train_idx]},
            "val": {"images": train_images[val_idx], "labels": train_labels[val_idx]},
            "test": {"images": test_images, "labels": test_labels},
        },
        info={
            "image_shape": list(train_images.shape[1:]),
            "num_classes": len(classes),
            "class_names": classes,
            "mean": pixels.mean().item(),
            "std": pixels.std().item(),
            "split_summary": (
                f"the {len(test_labels):,} test images; "
                f"{len(val_idx):,} of the {len(train_labels):,} training images held out "
                f"(seed {split.seed}) for validation"
            ),
        },
    )
