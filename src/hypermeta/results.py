"""Kept results of paper-scale runs: one small JSON record per experiment under
`results/` (committed, not a DVC output), written by `hypermeta paper-check` when a run
finishes and read by the report and the README's table "reproduced at paper scale"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from hypermeta.atomic import write_json
from hypermeta.config import StrictModel, validate_section
from hypermeta.errors import HypermetaError

RESULTS = Path("results")


class PublishedComparison(StrictModel):
    """One published number beside ours (params.yaml's `references`)."""

    metric: str
    published: float
    source: str
    ours: float
    ci_low: float | None = None  # our 95% interval, when the metric has one
    ci_high: float | None = None
    difference: float  # ours - published


class PaperRecord(StrictModel):
    experiment: str
    method: str
    dataset: str
    profile: str = "paper"
    partial: bool = Field(description="run at less than the paper profile's scale")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted key → value set over the paper profile"
    )
    metrics: dict[str, Any] = Field(description="metrics.json of the evaluate stage")
    published: list[PublishedComparison]
    git_commit: str = Field(
        pattern=r"^[0-9a-f]{40}$",
        description="the commit whose code ran (a snapshot of it): a full 40-hex sha, in git",
    )
    device: str
    threads: int
    wall_seconds: float = Field(description="train and evaluate, this invocation")
    resumed: bool = Field(description="training continued a checkpoint of an earlier run")
    data_md5: dict[str, str]
    finished: str = Field(description="UTC time, ISO 8601")
    mlflow_run_ids: dict[str, str]
    command: str


def record_path(experiment: str, folder: Path = RESULTS) -> Path:
    return folder / f"{experiment}.json"


def write_record(record: PaperRecord, folder: Path = RESULTS) -> Path:
    path = record_path(record.experiment, folder)
    write_json(path, record.model_dump())
    return path


def load_records(folder: Path = RESULTS) -> dict[str, PaperRecord]:
    """Every record under `folder` (none when it is missing), by experiment; a malformed
    one is one sentence naming the file and the key."""
    records = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise HypermetaError(f"{path} is not JSON ({exc}); restore it from git.") from None
        record = validate_section(PaperRecord, data, "", file=str(path))
        if record.experiment != path.stem:
            raise HypermetaError(
                f"{path} holds experiment {record.experiment!r}; a record is named after "
                "its experiment."
            )
        records[record.experiment] = record
    return records
