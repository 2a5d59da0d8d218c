"""Experiments resolved: params.yaml's entries (hypermeta.config) with their `model`,
`train` and `eval` sections checked against the schemas their method and engine kind
declare, so every typo fails with the key path named. This sits above the methods and
engines it consults, and below the stages (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from hypermeta.config import (
    Experiment,
    Params,
    Resources,
    merged_entry,
    read_params,
    validate_section,
)
from hypermeta.engine import get_engine
from hypermeta.errors import HypermetaError
from hypermeta.methods import get_method


def load_params(path: str | Path = "params.yaml", profile: str | None = None) -> Params:
    """Load params.yaml, check its shape and that every experiment resolves in every profile."""
    params = read_params(path, profile)
    for name in params.experiments:
        for profile_name in params.profiles:
            resolve(params, name, profile_name)
    return params


def resolve(params: Params, name: str, profile: str | None = None) -> Experiment:
    """The experiment `name` with the profile's overrides merged and every section validated."""
    merged, override = merged_entry(params, name, profile)
    profile = profile or params.profile
    where = f"experiments.{name}"

    def section(name: str, schema: type[BaseModel]) -> BaseModel:
        return validate_section(
            schema,
            merged[name],
            f"{where}.{name}",
            (f"{where}.profiles.{profile}.{name}", override.get(name, {})),
        )

    method = get_method(merged["method"], where=f"{where}.method")
    engine = get_engine(method.kind)
    sections = {
        "model": section("model", method.model_config),
        "train": section("train", engine.train_config),
        "eval": section("eval", engine.eval_config),
        "resources": Resources.model_validate(merged["resources"]),
    }
    # An experiment that needs none, or whose dataset is cut one way only, hashes as before
    # `needs` and `split` existed: its checkpoint resumes.
    validated = {
        key: value for key, value in merged.items() if key not in ("needs", "split") or value
    }
    return Experiment(
        name=name,
        profile=profile,
        method=method.name,
        kind=method.kind,
        dataset=merged["dataset"],
        split=merged["split"],
        group=merged["group"],
        needs=tuple(merged["needs"]),
        **sections,
        # What was validated, not what was written: `lr: 1` and `lr: 1.0`, or a default
        # spelled out, are one experiment with one fingerprint (its checkpoint resumes).
        section={**validated, **{key: value.model_dump() for key, value in sections.items()}},
    )


_PROFILE_LINE = re.compile(r"^profile:\s*\S+", re.MULTILINE)


def set_profile(path: str | Path, profile: str) -> bool:
    """Switch `profile:` in params.yaml in place, keeping comments (as `dvc exp run -S` does).

    Returns whether the file changed."""
    path = Path(path)
    text = path.read_text()
    updated, count = _PROFILE_LINE.subn(f"profile: {profile}", text, count=1)
    if count != 1:
        raise HypermetaError(f"{path} has no top-level 'profile:' line to switch.")
    if updated == text:
        return False
    load_params(path, profile=profile)  # an unknown profile fails here, before any write
    from hypermeta.atomic import write_text

    write_text(path, updated)
    return True
