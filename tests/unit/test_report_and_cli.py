import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
from unit.helpers import BASE_PARAMS, TOY_CONTINUAL_GROUP, load, write_params

from hypermeta.atomic import write_json
from hypermeta.cli import main
from hypermeta.config import Reference
from hypermeta.errors import HypermetaError
from hypermeta.experiments import load_params
from hypermeta.methods.fewshot_base import BATCHNORM_REGIMES
from hypermeta.report import build_report, format_metric, result_rows


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


def test_cli_lists_every_experiment_as_the_active_profile_resolves_it(
    tmp_path, monkeypatch, capsys
):
    params = copy.deepcopy(BASE_PARAMS)
    params["experiments"]["sine_of_a_long_name"] = {
        "method": "metasgd_regression",  # longer than the method column's other values
        "dataset": "sine",
        "group": "g",
    }
    params["data"]["datasets"]["quick"].append("sine")
    params["data"]["datasets"]["paper"].append("sine")
    write_params(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    assert main(["experiments"]) == 0
    assert capsys.readouterr().out == (
        "profile: quick\n"
        "  experiment           method              dataset        group\n"
        "  cnn                  cnn                 fashion_mnist  -\n"
        "  sine_of_a_long_name  metasgd_regression  sine           g\n"
    )


def test_cli_lists_experiments_without_importing_torch(tmp_path):
    """A listing is read from params.yaml; importing torch for it took seconds."""
    write_params(tmp_path)
    script = "import sys; from hypermeta.cli import main; main(['experiments']); "
    script += "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert run.stdout.splitlines()[-1] == "[]"


def test_cli_without_params_file_says_where_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "cnn"]) == 2
    assert "params.yaml not found; run from the project root" in capsys.readouterr().err


def test_cli_rejects_unknown_commands():
    with pytest.raises(SystemExit):
        main(["fly"])


def test_report_puts_every_published_number_beside_ours_and_leaves_nothing_on_failure(
    tmp_path, monkeypatch
):
    params = copy.deepcopy(BASE_PARAMS)
    params["references"] = {
        "cnn": [{"metric": "test_error", "value": 0.0072, "dataset": "mnist", "source": "Ha"}]
    }
    monkeypatch.chdir(tmp_path)
    loaded = load(tmp_path, params)
    with pytest.raises(HypermetaError, match="metrics.json is missing"):
        build_report(loaded, Path("reports"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]

    write_json(Path("metrics/cnn/metrics.json"), {"test_error": 0.1, "params_total": 5})
    page = (build_report(loaded, Path("reports")) / "report.md").read_text()
    summary = page.split("## Ours beside the papers")[1].split("##")[0]
    assert (
        "| cnn | test_error | 10.00% | 0.72% (Ha on mnist, not fashion_mnist) "
        "| fashion_mnist (not prepared); profile quick |" in summary
    )
    assert "params_total" not in summary  # no published number: only in the experiment's table


def test_report_says_which_data_split_and_slice_each_number_comes_from(tmp_path, monkeypatch):
    params = copy.deepcopy(BASE_PARAMS)
    params["experiments"]["cnn"]["profiles"]["quick"]["train"] = {"max_train_examples": 20000}
    params["references"] = {
        "cnn": [{"metric": "test_error", "value": 0.0072, "dataset": "mnist", "source": "Ha"}]
    }
    monkeypatch.chdir(tmp_path)
    loaded = load(tmp_path, params)
    write_json(Path("metrics/cnn/metrics.json"), {"test_error": 0.1})
    manifest = {
        "counts": {"train": 54000, "val": 6000, "test": 10000},
        "split_summary": "the 10,000 test images; 6,000 of 60,000 held out",
        "tensor_md5": {},
    }
    write_json(Path("data/prepared/fashion_mnist/manifest.json"), manifest)
    page = (build_report(loaded, Path("reports")) / "report.md").read_text()
    note = (
        "fashion_mnist (the 10,000 test images; 6,000 of 60,000 held out); "
        "slice: 20,000 of 54,000 train examples; profile quick"
    )
    assert (
        f"| cnn | test_error | 10.00% | 0.72% (Ha on mnist, not fashion_mnist) | {note} |" in page
    )
    assert f"Data: {note}." in page.split("## cnn: cnn on fashion_mnist")[1]


def test_report_names_the_batch_norm_regime_of_every_few_shot_number(tmp_path, monkeypatch):
    params = copy.deepcopy(BASE_PARAMS)
    params["data"]["datasets"] = {"quick": ["omniglot"], "paper": ["omniglot"]}
    regimes = {"batchnorm": "per_query", "also_batchnorm": ["transductive"]}
    params["experiments"] = {"fsl": {"method": "reptile", "dataset": "omniglot", "eval": regimes}}
    params["references"] = {
        "fsl": [
            {"metric": m, "value": 0.95, "dataset": "omniglot", "source": "Nichol"}
            for m in ("accuracy_5way_1shot", "accuracy_5way_1shot_transductive")
        ]
    }
    monkeypatch.chdir(tmp_path)
    metrics = {"meta_test_batchnorm": "per_query", "accuracy_5way_1shot": 0.9,
               "accuracy_5way_1shot_ci95": 0.01, "accuracy_5way_1shot_transductive": 0.96,
               "accuracy_5way_1shot_transductive_ci95": 0.01,
               "classifier_ways": "at most 5 (a fixed-size head)"}  # fmt: skip
    write_json(Path("metrics/fsl/metrics.json"), metrics)
    page = (build_report(load(tmp_path, params), Path("reports")) / "report.md").read_text()
    summary = page.split("## Ours beside the papers")[1].split("##")[0]
    data = "omniglot (not prepared); profile quick"
    assert (
        f"| accuracy_5way_1shot | 90.00% ± 1.00% | 95.00% (Nichol) | {data}; batch norm per_query |"
        in summary
    )
    assert f"| 95.00% (Nichol) | {data}; batch norm transductive |" in summary
    section = page.split("## fsl: reptile on omniglot")[1]
    assert (
        f"Data: {data}. Batch norm at meta-test: per_query ({BATCHNORM_REGIMES['per_query']}); "
        f"metrics ending _transductive: transductive ({BATCHNORM_REGIMES['transductive']}). "
        "Ways: at most 5 (a fixed-size head)." in section
    )


def continual_metrics(accuracy: float, transfer: float) -> dict:
    metrics = {"compression_ratio": 0.25, "seconds_per_task": 12.5, "seeds": 3}
    for name, value in {
        "cl1_average_accuracy": accuracy,
        "cl1_backward_transfer": transfer,
        "cl2_average_accuracy": accuracy - 0.2,
        "cl3_average_accuracy": accuracy - 0.4,
    }.items():
        metrics |= {name: value, f"{name}_ci_low": value - 0.01, f"{name}_ci_high": value + 0.01}
    return metrics


def test_continual_group_is_one_side_by_side_table_in_the_report(tmp_path, monkeypatch):
    experiments = TOY_CONTINUAL_GROUP
    write_params(tmp_path, {**BASE_PARAMS, "experiments": experiments})
    monkeypatch.chdir(tmp_path)
    write_json(Path("metrics/hnet_toy/metrics.json"), continual_metrics(0.95, -0.005))
    write_json(Path("metrics/ewc_toy/metrics.json"), continual_metrics(0.80, -0.15))
    report = build_report(load_params(), tmp_path / "reports") / "report.md"
    section = report.read_text().split("## Compared: toy_cl")[1]
    table = [  # rows in params.yaml's order (write_params sorts the names)
        "| experiment | CL1 average final accuracy | CL1 backward transfer | CL2 average accuracy "
        "| CL3 average accuracy | compression ratio | seconds per task |",
        "|---|---|---|---|---|---|---|",
        "| ewc_toy | 80.00% [79.00%, 81.00%] | -15.00% [-16.00%, -14.00%] "
        "| 60.00% [59.00%, 61.00%] | 40.00% [39.00%, 41.00%] | 0.25 | 12.5 |",
        "| hnet_toy | 95.00% [94.00%, 96.00%] | -0.50% [-1.50%, 0.50%] | 75.00% [74.00%, 76.00%] "
        "| 55.00% [54.00%, 56.00%] | 0.25 | 12.5 |",
    ]
    assert "\n".join(table) in section
    assert "the baselines among their task heads" in section


def test_metric_rows_sort_numbers_as_numbers():
    metrics = {f"cl1_average_accuracy_after_task_{i}": 0.9 for i in (1, 10, 2, 3)}
    metrics |= {"mse_k10": 0.5, "mse_k5": 0.7}
    assert [row[0] for row in result_rows(metrics, [], "mnist")] == [
        "cl1_average_accuracy_after_task_1",
        "cl1_average_accuracy_after_task_2",
        "cl1_average_accuracy_after_task_3",
        "cl1_average_accuracy_after_task_10",
        "mse_k5",
        "mse_k10",
    ]


def test_every_cited_paper_number_names_its_table_or_says_unverified():
    """The paper column is read as a citation: no internal notes, a table, section, figure
    or the abstract (where a paper states its headline numbers)."""
    params = load_params(Path(__file__).parents[2] / "params.yaml")
    for name, refs in params.references.items():
        for ref in refs:
            cited = re.search(r"(Table \d+|§\d|Fig\. \d+|abstract)", ref.source)
            assert cited and ("issue" not in ref.source), (name, ref.source)
