"""Atomic writes: a temp file in the destination folder, then rename, so no reader
(and no rerun after a crash) ever sees a half-written output. And `torch_load`, the one
reader of what `torch_save` writes.

Every torch file the project saves (models, checkpoints, prepared splits) holds only
tensors and plain values (dicts, lists, numbers, strings), so `torch_load` reads with
`weights_only=True`: a model file from elsewhere cannot run code when it is read."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypermeta.errors import HypermetaError


@contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; rename it into place on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield tmp_path
        os.replace(tmp_path, destination)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_with(destination: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    with atomic_path(destination) as tmp:
        writer(tmp)
    return Path(destination)


def write_text(destination: str | os.PathLike, text: str) -> Path:
    return write_with(destination, lambda tmp: tmp.write_text(text))


def write_json(destination: str | os.PathLike, data: Any) -> Path:
    return write_text(destination, json.dumps(data, indent=2, sort_keys=True) + "\n")


def torch_save(destination: str | os.PathLike, obj: Any) -> Path:
    import torch  # here, not above: writing JSON or text needs no torch

    return write_with(destination, lambda tmp: torch.save(obj, tmp))


def torch_load(path: str | os.PathLike, fix: str) -> Any:
    """What `torch_save` wrote at `path`, read without running code; a file that is not
    one (foreign, damaged, or carrying code) is one sentence saying `fix`."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever torch or pickle raised: say which, and the fix
        raise HypermetaError(
            f"{path} is not a file saved by hypermeta, or is damaged ({type(exc).__name__}); {fix}."
        ) from None
