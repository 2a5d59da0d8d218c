import json

import pytest
import torch
from unit.helpers import BASE_PARAMS, load, untimed, write_prepared

from hypermeta.engine import StageContext, get_engine
from hypermeta.engine.checkpoint import Checkpointer
from hypermeta.engine.device import resolve_device
from hypermeta.errors import HypermetaError
from hypermeta.experiments import resolve
from hypermeta.plots import get_plotter
from hypermeta.tracking import NullTracker


def context(tmp_path, exp) -> StageContext:
    return StageContext(
        experiment=exp,
        data_dir=tmp_path / "data",
        model_dir=tmp_path / "models" / exp.name,
        metrics_dir=tmp_path / "metrics" / exp.name,
        plots_dir=tmp_path / "plots" / exp.name,
        tracker=NullTracker(),
    )


@pytest.fixture
def prepared(tmp_path):
    write_prepared(tmp_path / "data")
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cnn", "hypercnn"])
def test_models_learn_a_learnable_task_far_above_chance(prepared, method):
    params = dict(BASE_PARAMS, experiments={"m": dict(BASE_PARAMS["experiments"]["cnn"])})
    params["experiments"]["m"] = {**params["experiments"]["m"], "method": method}
    exp = resolve(load(prepared, params), "m")
    ctx = context(prepared, exp)
    engine = get_engine("classification")
    engine.train(ctx)
    metrics = engine.evaluate(ctx)
    assert metrics["test_accuracy"] > 0.9  # chance is 0.1
    low, high = metrics["test_accuracy_ci_low"], metrics["test_accuracy_ci_high"]
    assert low <= metrics["test_accuracy"] <= high and high - low > 0
    paths = get_plotter("classification").visualize(ctx)
    assert {p.name for p in paths} == {"filters.png", "curves.png"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_interrupted_training_resumes_to_the_same_weights(prepared, monkeypatch):
    exp = resolve(load(prepared), "cnn")
    engine = get_engine("classification")
    straight = context(prepared / "straight", exp)
    straight.data_dir = prepared / "data"
    engine.train(straight)

    saves = 0
    original_save = Checkpointer.save

    def killed_after_first_epoch(self, state):
        nonlocal saves
        saves += 1
        if saves == 2:  # epoch 2 trained, killed before its checkpoint
            raise KeyboardInterrupt
        original_save(self, state)

    resumed = context(prepared / "resumed", exp)
    resumed.data_dir = prepared / "data"
    monkeypatch.setattr(Checkpointer, "save", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        engine.train(resumed)
    assert not resumed.model_path.exists()  # nothing half-written
    monkeypatch.setattr(Checkpointer, "save", original_save)
    engine.train(resumed)

    a = torch.load(straight.model_path, weights_only=True)["state_dict"]
    b = torch.load(resumed.model_path, weights_only=True)["state_dict"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    history = json.loads(resumed.history_path.read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert untimed(history) == untimed(json.loads(straight.history_path.read_text()))


def test_checkpoint_of_other_parameters_is_not_resumed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    Checkpointer(path, "hash-a").save({"epoch": 3})
    assert Checkpointer(path, "hash-a").load()["epoch"] == 3
    assert Checkpointer(path, "hash-b").load() is None


def test_unreadable_checkpoint_says_how_to_recover(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(HypermetaError, match="delete it to restart"):
        Checkpointer(path, "h").load()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(HypermetaError, match="sees no CUDA GPU.*set it to 'auto' or 'cpu'"):
        resolve_device("cuda", "experiments.cnn.train.device")
    assert resolve_device("auto").type == "cpu"
