"""The contract between pipeline stages and an engine kind.

train     writes <model_dir>/model.pt and history.json (per-epoch records), keeping a
          resumable <model_dir>/checkpoint.pt as it goes;
trained_model  the trained nn.Module from model.pt and how to call it: the train stage
          logs it as an MLflow model (`mlflow.pytorch.load_model("runs:/<run>/model")`);
evaluate  returns flat metrics (the stage writes metrics.json): numbers, and strings
          naming how they were measured (e.g. the few-shot batch-norm regime);
          `compare_columns` (optional) names the metrics the report tabulates for a group.
Its figures (the visualize stage, the report's comparisons) are hypermeta.plots'.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel
from torch import nn

from hypermeta.config import Experiment, params_hash
from hypermeta.errors import HypermetaError
from hypermeta.paths import MODELS
from hypermeta.tracking import Tracker


@dataclass
class StageContext:
    experiment: Experiment
    data_dir: Path
    model_dir: Path
    metrics_dir: Path
    plots_dir: Path
    tracker: Tracker

    @property
    def model_path(self) -> Path:
        return self.model_dir / "model.pt"

    @property
    def history_path(self) -> Path:
        return self.model_dir / "history.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.model_dir / "checkpoint.pt"

    def training_hash(self) -> str:
        """What a checkpoint must have been made with to resume: the experiment's params,
        and the trained models it needs (a retrained one starts its training afresh)."""
        if not self.experiment.needs:
            return self.experiment.params_hash
        from hypermeta.data.download import md5_of

        models = {name: md5_of(self.needed_model(name)) for name in self.experiment.needs}
        return params_hash({"params": self.experiment.params_hash, "needs": models})

    def needed_model(self, name: str) -> Path:
        """The trained model.pt of experiment `name`, which this one lists under `needs:`
        (dvc.yaml then trains it first)."""
        if name not in self.experiment.needs:
            raise HypermetaError(
                f"experiments.{self.experiment.name} reads the trained model of {name!r} but "
                f"does not list it under needs; add needs: [{name}] to its entry in params.yaml."
            )
        path = MODELS / name / "model.pt"
        if not path.exists():
            raise HypermetaError(
                f"{path} not found; train {name!r} first (python pipeline/train.py {name})."
            )
        return path


class Engine(ABC):
    kind: ClassVar[str]
    train_config: ClassVar[type[BaseModel]]
    eval_config: ClassVar[type[BaseModel]]
    # A group's side-by-side table in the report: column title → metric (shown with its
    # CI), one row per experiment; `compare_note` says what the reader must know to read it.
    compare_columns: ClassVar[dict[str, str]] = {}
    compare_note: ClassVar[str] = ""

    @abstractmethod
    def train(self, ctx: StageContext) -> None: ...

    @abstractmethod
    def trained_model(self, ctx: StageContext) -> tuple[nn.Module, str]:
        """The trained model, in eval mode on the CPU, and one sentence on calling it."""

    @abstractmethod
    def evaluate(self, ctx: StageContext) -> dict[str, Any]: ...
