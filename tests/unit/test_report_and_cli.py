import pytest
from unit.helpers import write_params

from hypermeta.cli import main
from hypermeta.config import Reference
from hypermeta.report import format_metric, result_rows


def test_metrics_show_their_interval_and_the_paper_beside():
    metrics = {
        "test_error": 0.1,
        "test_error_ci_low": 0.09,
        "test_error_ci_high": 0.11,
        "params_total": 5,
    }
    ref = Reference(metric="test_error", value=0.0072, dataset="mnist", source="Ha 2016")
    rows = result_rows(metrics, [ref], "fashion_mnist")
    assert rows[0] == (
        "test_error",
        "10.00% [9.00%, 11.00%]",
        "0.72% (Ha 2016 on mnist, not fashion_mnist)",
    )
    assert ("params_total", "5", "") in rows
    # an extra batch-norm regime's keys carry its suffix and match their own reference
    regimes = {"accuracy_5way_1shot": 0.9, "accuracy_5way_1shot_ci95": 0.01,
               "accuracy_5way_1shot_transductive": 0.95,
               "accuracy_5way_1shot_transductive_ci95": 0.02}  # fmt: skip
    refs = [
        Reference(metric=m, value=v, dataset="omniglot", source="Nichol 2018")
        for m, v in (("accuracy_5way_1shot", 0.9539), ("accuracy_5way_1shot_transductive", 0.9768))
    ]
    assert result_rows(regimes, refs, "omniglot") == [
        ("accuracy_5way_1shot", "90.00% ± 1.00%", "95.39% (Nichol 2018)"),
        ("accuracy_5way_1shot_transductive", "95.00% ± 2.00%", "97.68% (Nichol 2018)"),
    ]
    assert format_metric("bpc", {"bpc": 1.3, "bpc_ci95": 0.01}) == "1.3 ± 0.01"


def test_cli_unknown_experiment_is_one_sentence_and_exit_2(tmp_path, monkeypatch, capsys):
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "resnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hypermeta: error: unknown experiment 'resnet'") and "\n" not in err


def test_cli_without_params_file_says_where_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "cnn"]) == 2
    assert "params.yaml not found; run from the project root" in capsys.readouterr().err


def test_cli_rejects_unknown_commands():
    with pytest.raises(SystemExit):
        main(["fly"])
