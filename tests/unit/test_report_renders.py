"""The report as a reader sees it: opened in a real browser (headless Chromium)."""

from pathlib import Path

from browser import render
from unit.helpers import BASE_PARAMS, TOY_CONTINUAL_GROUP, write_params

from hypermeta.atomic import write_json, write_text
from hypermeta.experiments import load_params
from hypermeta.report import build_report
from hypermeta.viz import save_curves


def test_report_renders_every_image_and_fits_the_window(tmp_path, monkeypatch):
    """The hard cases for a page: a group table of long intervals, a comparison with
    many curves, a data-split note with a line of a hundred alphabet names."""
    experiments = TOY_CONTINUAL_GROUP
    write_params(tmp_path, {**BASE_PARAMS, "experiments": experiments})
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

    page = build_report(load_params(), Path("reports")) / "index.html"
    found = render(page, width=1024)
    assert found["images"] == 1 and found["broken"] == [], found
    assert found["scroll_width"] <= found["inner_width"] and found["too_wide"] == [], found
