"""The kept results of paper-scale runs (results/): every record parses and names a commit
of the history; the report and the README show them (no test re-runs them)."""

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest
from unit.helpers import BASE_PARAMS, TOY_CONTINUAL_GROUP, load, paper_record

from hypermeta.atomic import write_json
from hypermeta.data.download import MIRROR_ENV
from hypermeta.data.registry import DATASETS
from hypermeta.errors import HypermetaError
from hypermeta.experiments import load_params
from hypermeta.report import (
    README_BEGIN,
    README_END,
    build_report,
    format_difference,
    format_duration,
    missing_data,
    not_yet_rows,
    paper_scale_markdown,
    readme_with_results,
)
from hypermeta.results import PublishedComparison, load_records, write_record

ROOT = Path(__file__).resolve().parents[2]


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


HEAD = git("rev-parse", "HEAD").stdout.strip()


def test_every_kept_record_parses_and_names_a_commit_of_the_history():
    records = load_records(ROOT / "results")  # each validated against PaperRecord
    assert sorted(records) == sorted(path.stem for path in (ROOT / "results").glob("*.json"))
    for name, record in records.items():
        commit = record.git_commit
        assert git("cat-file", "-e", f"{commit}^{{commit}}").returncode == 0, (
            f"results/{name}.json names commit {commit}, which this repository does not have"
        )
        assert git("merge-base", "--is-ancestor", commit, "HEAD").returncode == 0, (
            f"results/{name}.json names commit {commit}, which is not in the history of HEAD"
        )


def test_the_readme_shows_the_table_the_records_give():
    readme = (ROOT / "README.md").read_text()
    records = load_records(ROOT / "results")
    params = load_params(ROOT / "params.yaml")
    section = paper_scale_markdown(params, records, missing_data(params, ROOT))
    assert readme_with_results(readme, section) == readme, (
        "README.md's section 'Reproduced at paper scale' differs from results/ and "
        "params.yaml; rewrite it with `python -m hypermeta.report --readme`"
    )


def test_a_dataset_the_mirror_lacks_is_why_its_numbers_are_not_reproduced(tmp_path, monkeypatch):
    params = three_kinds_of_reference(tmp_path)
    mirror = tmp_path / "mirror" / "mnist"
    mirror.mkdir(parents=True)
    spec = DATASETS["mnist"]
    kept, lost = spec.files[:-1], spec.files[-1]
    for remote in kept:
        (mirror / remote.name).touch()
    monkeypatch.setenv(MIRROR_ENV, str(mirror.parent))
    missing = missing_data(params, tmp_path)
    assert missing == {"mnist": [f"mnist/{lost.name}"]}

    why = {name: reason for name, _, reason in not_yet_rows(params, {}, missing)}
    unavailable = (
        f"data not available: the data mirror has no mnist/{lost.name} (the download stage "
        "would have to fetch it from its publisher)"
    )
    assert why["cnn_cpu"] == unavailable  # not "fits this CPU": it could not run here
    assert why["hnet_toy"] == (
        f"{unavailable}; needs a GPU at paper scale (its paper profile asks for 1 GPU for "
        "about 1 h 30 min)"
    )
    monkeypatch.setenv(MIRROR_ENV, "https://example.org/data")  # a web mirror: cannot tell
    assert missing_data(params, tmp_path) == {}


def test_the_readme_section_is_rewritten_between_its_markers_only():
    readme = f"# title\n\n{README_BEGIN}\nold table\n{README_END}\n\n## next\n"
    assert readme_with_results(readme, "new table") == (
        f"# title\n\n{README_BEGIN}\n\nnew table\n\n{README_END}\n\n## next\n"
    )
    with pytest.raises(HypermetaError, match="README.md lacks the lines"):
        readme_with_results("# title\n", "new table")


def test_differences_and_wall_times_read_as_a_person_writes_them():
    assert format_difference("test_error", 0.0009) == "+0.09 points"  # a percentage
    assert format_difference("mse_k5", -0.031) == "-0.031"
    assert [format_duration(s) for s in (7.4, 59.6, 125, 3600, 3725)] == [
        "7 s", "1 min 00 s", "2 min 05 s", "1 h", "1 h 02 min"
    ]  # fmt: skip


def three_kinds_of_reference(tmp_path: Path):
    """cnn and ewc_toy have records (cnn compares one of its two published numbers;
    ewc_toy none, so it shows its group's); hnet_toy asks for a GPU at paper scale and
    cnn_cpu for none: neither has a record."""
    params = copy.deepcopy(BASE_PARAMS)
    params["experiments"] |= TOY_CONTINUAL_GROUP | {
        "cnn_cpu": copy.deepcopy(params["experiments"]["cnn"])
    }
    params["experiments"]["hnet_toy"] = copy.deepcopy(TOY_CONTINUAL_GROUP["hnet_toy"])
    params["experiments"]["hnet_toy"]["profiles"]["paper"] = {
        "resources": {"gpu": 1, "runtime": 90}
    }
    ha = [{"metric": "test_error", "value": 0.0072, "dataset": "mnist", "source": "Ha 2016"},
          {"metric": "params_conv2_weight", "value": 12544, "dataset": "mnist",
           "source": "Ha 2016"}]  # fmt: skip
    params["references"] = {
        "cnn": ha,
        "cnn_cpu": ha[:1],
        "hnet_toy": [
            {
                "metric": "cl1_average_accuracy",
                "value": 0.9979,
                "dataset": "mnist",
                "source": "von Oswald 2020",
            }
        ],  # fmt: skip
    }
    loaded = load(tmp_path, params)
    for name in loaded.experiments:
        write_json(tmp_path / "metrics" / name / "metrics.json", {"test_error": 0.1})
    return loaded


def test_the_report_shows_each_record_beside_the_paper_and_why_the_rest_are_not(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    params = three_kinds_of_reference(tmp_path)
    kept = tmp_path / "kept"  # not results/: the report reads the folder it is given
    metrics = {"test_error": 0.0081, "test_error_ci_low": 0.0064, "test_error_ci_high": 0.01}
    comparison = PublishedComparison(metric="test_error", published=0.0072, source="Ha 2016",
                                     ours=0.0081, ci_low=0.0064, ci_high=0.01,
                                     difference=0.0009)  # fmt: skip
    cnn = paper_record("cnn", HEAD, partial=True, overrides={"train.epochs": 10},
                       metrics=metrics | {"params_total": 5}, published=[comparison],
                       threads=2, wall_seconds=3725.0, resumed=True)  # fmt: skip
    accuracy = {"cl1_average_accuracy": 0.9, "cl1_average_accuracy_ci_low": 0.89,
                "cl1_average_accuracy_ci_high": 0.91}  # fmt: skip
    ewc = paper_record("ewc_toy", HEAD, method="ewc", metrics=accuracy)
    for record in (cnn, ewc):
        write_record(record, kept)

    report = build_report(params, Path("reports"), results=kept)
    markdown = (report / "report.md").read_text()
    section = markdown.split("## Reproduced at paper scale")[1].split("\n## ")[0]
    rows = [
        ["cnn", "test_error", "0.81% [0.64%, 1.00%]", "0.72% (Ha 2016)", "+0.09 points",
         "partial: train.epochs=10", "1 h 02 min (resumed)", "cpu, 2 threads", HEAD[:8],
         "2026-12-02"],
        ["ewc_toy", "cl1_average_accuracy", "90.00% [89.00%, 91.00%]", "—", "—", "full",
         "42 s", "cpu, 1 thread", HEAD[:8], "2026-12-02"],
    ]  # fmt: skip
    not_yet = [
        ["cnn", "params_conv2_weight 12,544 (Ha 2016)",
         "its paper-scale record does not compare these"],
        ["cnn_cpu", "test_error 0.72% (Ha 2016)",
         "fits this CPU; not run yet (`hypermeta paper-check cnn_cpu`)"],
        ["hnet_toy", "cl1_average_accuracy 99.79% (von Oswald 2020)",
         "needs a GPU at paper scale (its paper profile asks for 1 GPU for about 1 h 30 min)"],
    ]  # fmt: skip
    reproduced, missing = section.split("### Not yet reproduced at paper scale")
    assert markdown_rows(reproduced) == rows
    assert markdown_rows(missing) == not_yet
    as_readme = paper_scale_markdown(params, load_records(kept), missing_data(params, tmp_path))
    assert section.strip() == as_readme

    page = (report / "index.html").read_text()
    cells = [
        [re.sub("<[^>]+>", "", cell).replace("\u00a0", " ") for cell in row]
        for row in (re.findall(r"<td>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", page))
    ]
    for row in rows + not_yet:  # markdown's `code` is <code> there
        assert [cell.replace("`", "") for cell in row] in cells, row
    assert "<code>hypermeta paper-check cnn_<wbr>cpu</code>" in page
    # the quick numbers beside the papers say their scale
    assert "## Ours beside the papers (quick profile)" in markdown
    assert "| experiment | metric | ours (quick profile) | paper | our data |" in markdown


def markdown_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown table in `text`."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[1:]]


def test_without_records_the_report_says_so_and_marks_every_published_number(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = three_kinds_of_reference(tmp_path)
    report = build_report(params, Path("reports"), results=tmp_path / "missing")
    section = (report / "report.md").read_text().split("## Reproduced at paper scale")[1]
    reproduced, missing = section.split("### Not yet reproduced at paper scale")
    assert reproduced.strip() == (
        "No experiment has been run at paper scale yet: `results/` holds no record."
    )
    marked = [row[1] for row in markdown_rows(missing.split("\n## ")[0])]
    assert marked == [
        "test_error 0.72%, params_conv2_weight 12,544 (Ha 2016)",
        "test_error 0.72% (Ha 2016)",
        "cl1_average_accuracy 99.79% (von Oswald 2020)",
    ]


def good_record() -> dict:
    return paper_record("cnn", HEAD).model_dump()


@pytest.mark.parametrize(
    ("name", "content", "sentence"),
    [
        ("cnn", {k: v for k, v in good_record().items() if k != "device"},
         "kept/cnn.json: device is required; add it."),
        ("cnn", good_record() | {"git_commit": HEAD[:8]},
         "kept/cnn.json: git_commit: String should match pattern"),
        ("cnn", good_record() | {"threads": "two"}, "kept/cnn.json: threads: Input should be"),
        ("cnn", "{not json", "kept/cnn.json is not JSON"),
        ("hypercnn", good_record(),
         "kept/hypercnn.json holds experiment 'cnn'; a record is named after its experiment."),
    ],
)  # fmt: skip
def test_a_malformed_record_is_one_sentence_naming_its_file(
    tmp_path, monkeypatch, name, content, sentence
):
    monkeypatch.chdir(tmp_path)
    path = Path("kept", f"{name}.json")
    path.parent.mkdir()
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(HypermetaError) as raised:
        load_records(Path("kept"))
    message = str(raised.value)
    assert message.startswith(sentence) and "\n" not in message, message
    assert message.count(". ") == 0 and message.endswith("."), message
