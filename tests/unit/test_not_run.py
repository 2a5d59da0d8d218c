"""An experiment its profile does not run (`run_in`): its stages leave records, quickly,
and every reader of them says so in one sentence."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from unit.helpers import BASE_PARAMS, load, write_params

from hypermeta.cli import main
from hypermeta.engine.checkpoint import Checkpointer
from hypermeta.engine.classification import load_trained
from hypermeta.errors import HypermetaError
from hypermeta.report import build_report


def paper_only_params() -> dict:
    params = copy.deepcopy(BASE_PARAMS)
    params["experiments"]["cnn"]["run_in"] = ["paper"]
    params["references"] = {
        "cnn": [{"metric": "test_error", "value": 0.0072, "dataset": "mnist", "source": "Ha"}]
    }
    return params


def test_stages_of_an_experiment_not_run_leave_records_that_readers_explain(
    tmp_path, monkeypatch, capsys
):
    write_params(tmp_path, paper_only_params())
    monkeypatch.chdir(tmp_path)
    for stage in ("train", "evaluate", "visualize"):
        assert main([stage, "cnn"]) == 0
    assert "runs only under profile paper" in capsys.readouterr().out
    model = Path("models/cnn/model.pt")
    outputs = [model, Path("models/cnn/history.json"), Path("metrics/cnn/metrics.json")]
    for path in outputs:
        assert "was not run under quick" in json.loads(path.read_text())["not_run"]
    assert Path("plots/cnn").is_dir() and not list(Path("plots/cnn").iterdir())

    with pytest.raises(HypermetaError) as error:
        load_trained(model)
    assert str(error.value).startswith(f"{model} holds no trained model: experiment cnn runs")
    assert "snakemake --config profile=paper" in str(error.value)
    # switching to the profile that runs it trains afresh, not from the record
    assert Checkpointer(Path("models/cnn/checkpoint.pt"), "hash").load() is None

    report = build_report(load(tmp_path, paper_only_params()), Path("reports"))
    text = (report / "report.md").read_text()
    assert "| cnn | test_error | not run | 0.72% (Ha on mnist, not fashion_mnist) |" in text
    assert "Not run under profile quick" in text and "## cnn:" not in text


def test_a_skipped_stage_keeps_a_real_checkpoint_and_loads_neither_torch_nor_mlflow(tmp_path):
    write_params(tmp_path, paper_only_params())
    checkpoint = tmp_path / "models" / "cnn" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"PK a torch archive from a paper run")
    probe = (
        "import sys; from hypermeta.cli import main; code = main(['train', 'cnn']); "
        "assert not {'torch', 'mlflow'} & set(sys.modules), 'heavy import'; sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert checkpoint.read_bytes() == b"PK a torch archive from a paper run"


def test_a_misspelt_run_in_is_named_not_taken_for_a_skip(tmp_path, monkeypatch, capsys):
    params = paper_only_params()
    params["experiments"]["cnn"]["run_in"] = ["papr"]
    write_params(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "cnn"]) == 2
    assert "cnn.run_in names 'papr', not a defined profile" in capsys.readouterr().err
    assert not Path("models").exists()
