"""Resumable training state: written atomically after every epoch, tied to the config
that produced it so a changed experiment starts afresh instead of resuming; and reading
a trained model's saved file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypermeta.atomic import torch_load, torch_save
from hypermeta.errors import HypermetaError


class Checkpointer:
    def __init__(self, path: Path, config_hash: str) -> None:
        self.path = Path(path)
        self.config_hash = config_hash

    def load(self) -> dict[str, Any] | None:
        """The saved state if it belongs to this config, else None (training starts afresh)."""
        if not self.path.exists():
            return None
        state = torch_load(
            self.path, "delete it to restart this experiment's training from scratch"
        )
        if state.get("config_hash") != self.config_hash:
            print(f"[hypermeta] {self.path} was made with other parameters; starting afresh.")
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        torch_save(self.path, {**state, "config_hash": self.config_hash})


def load_saved(path: Path, fix: str = "run the train stage for this experiment") -> dict[str, Any]:
    """The dict a train stage saved at `path`; a missing or unreadable file is one
    sentence saying `fix`."""
    path = Path(path)
    if not path.exists():
        raise HypermetaError(f"{path} not found; {fix}.")
    saved = torch_load(path, fix)
    if not isinstance(saved, dict) or "experiment" not in saved:  # e.g. a checkpoint or split
        raise HypermetaError(f"{path} is not a trained model saved by hypermeta; {fix}.")
    return saved
