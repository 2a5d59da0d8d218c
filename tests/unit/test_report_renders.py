"""The report as a reader sees it: opened in a real browser (headless Chromium)."""

from pathlib import Path

from browser import render
from unit.helpers import BASE_PARAMS, TOY_CONTINUAL_GROUP, paper_record, write_params

from hypermeta.atomic import write_json, write_text
from hypermeta.experiments import load_params
from hypermeta.report import build_report
from hypermeta.results import PublishedComparison, write_record
from hypermeta.viz import save_curves


def test_report_renders_every_image_and_fits_the_window(tmp_path, monkeypatch):
    """The hard cases for a page: a group table of long intervals, a comparison with
    many curves, a data-split note with a line of a hundred alphabet names, the ten
    columns of the paper-scale records with a partial run's overrides."""
    experiments = TOY_CONTINUAL_GROUP
    reference = {"metric": "cl1_average_accuracy", "value": 0.9979, "dataset": "mnist",
                 "source": "von Oswald et al. 2020, Table 1 (HNET, Split MNIST, CL1)"}  # fmt: skip
    unmeasured = reference | {"metric": "cl1_backward_transfer", "value": 0.0}  # not yet
    references = {"hnet_toy": [reference, unmeasured]}
    params = {**BASE_PARAMS, "experiments": experiments, "references": references}
    write_params(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    for name in experiments:
        metrics = {"compression_ratio": 0.25, "seconds_per_task": 12.5, "seeds": 3}
        for key in ("cl1_average_accuracy", "cl1_backward_transfer", "cl2_average_accuracy",
                    "cl3_average_accuracy"):  # fmt: skip
            metrics |= {key: 0.9, f"{key}_ci_low": 0.89, f"{key}_ci_high": 0.91}
        metrics |= {f"cl1_average_accuracy_after_task_{i}": 0.9 for i in range(1, 11)}
        write_json(Path("metrics", name, "metrics.json"), metrics)
    histories = {
        f"learner_{i}": [{"epoch": e, "val_loss": 1 / (e + i)} for e in range(1, 4)]
        for i in range(12)
    }
    save_curves(histories, {"loss": ["val_loss"]}, Path("plots/hnet_toy/curves.png"), "many")
    alphabets = ", ".join(f"Alphabet_of_the_Magi_{i}" for i in range(100))
    write_text(Path("plots/hnet_toy/data_split.txt"), f"  train: 964 characters; {alphabets}\n")

    # paper-scale records: a partial run with long overrides, and one without a paper's number
    commit = "0123456789abcdef" * 2 + "01234567"  # rendered, not looked up
    comparison = PublishedComparison(metric="cl1_average_accuracy", published=0.9979,
                                     source=reference["source"], ours=0.9, ci_low=0.89,
                                     ci_high=0.91, difference=-0.0979)  # fmt: skip
    overrides = {"train.seeds": 1, "train.epochs_per_task": 5, "model.embedding_dim": 24,
                 "eval.max_test_examples_per_task": 2000}  # fmt: skip
    records = [
        paper_record("hnet_toy", commit, method="hnet", partial=True, overrides=overrides,
                     metrics=metrics, published=[comparison], wall_seconds=5400.0),
        paper_record("ewc_toy", commit, method="ewc", metrics=metrics),
    ]  # fmt: skip
    for record in records:
        write_record(record, Path("results"))

    page = build_report(load_params(), Path("reports"), results=Path("results")) / "index.html"
    found = render(page, width=1024)
    assert found["images"] == 1 and found["broken"] == [], found
    assert found["scroll_width"] <= found["inner_width"] and found["too_wide"] == [], found
    assert "Reproduced at paper scale" in found["text"]
    assert "-9.79 points" in found["text"] and "max_test_examples_per_task=2000" in found["text"]
    assert "Not yet reproduced at paper scale" in found["text"]
    assert "cl1_backward_transfer 0.00%" in found["text"]
