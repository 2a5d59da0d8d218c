"""Shared set-up of the few-shot tests: omniglot_small prepared from the offline mirror
(the real split stage), and experiments resolved from an in-memory params section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import MIRROR

from hypermeta.config import Experiment, Params, SplitConfig
from hypermeta.data.download import download
from hypermeta.data.prepare import prepare
from hypermeta.engine import StageContext
from hypermeta.experiments import resolve
from hypermeta.tracking import NullTracker


def prepared_omniglot_small(root: Path) -> Path:
    """data/prepared/omniglot_small under `root`, made by the download and split code."""
    download("omniglot_small", root / "raw", str(MIRROR))
    prepare("omniglot_small", root / "raw", root / "prepared", SplitConfig())
    return root / "prepared" / "omniglot_small"


def fewshot_experiment(section: dict[str, Any], name: str = "fsl") -> Experiment:
    params = Params.model_validate(
        {
            "profile": "quick",
            "profiles": {"quick": "tests"},
            "data": {"datasets": {"quick": ["omniglot_small"]}},
            "experiments": {name: {"dataset": "omniglot_small", **section}},
        }
    )
    return resolve(params, name)


def stage_context(exp: Experiment, data_dir: Path, out: Path) -> StageContext:
    return StageContext(
        experiment=exp,
        data_dir=data_dir,
        model_dir=out / "models" / exp.name,
        metrics_dir=out / "metrics" / exp.name,
        plots_dir=out / "plots" / exp.name,
        tracker=NullTracker(),
    )


def assert_crash_resumes_exactly(
    engine: Any, straight: StageContext, resumed: StageContext, learner_class: type, patch: Any
) -> None:
    """`resumed` trained with a crash at iteration 4 (after the checkpoint of iteration 3),
    then again, ends with the model and history of `straight`, trained uninterrupted."""
    import pytest
    import torch
    from helpers import untimed

    on_iteration = learner_class.on_iteration

    def crash_at_iteration_4(self, iteration, total):
        if iteration == 4:
            raise KeyboardInterrupt
        on_iteration(self, iteration, total)

    with patch.context() as patched:
        patched.setattr(learner_class, "on_iteration", crash_at_iteration_4)
        with pytest.raises(KeyboardInterrupt):
            engine.train(resumed)
    assert not resumed.model_path.exists() and resumed.checkpoint_path.exists()
    engine.train(resumed)
    final = torch.load(resumed.model_path, weights_only=True)
    reference = torch.load(straight.model_path, weights_only=True)
    for key, value in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    assert untimed(final["history"]) == untimed(reference["history"])
