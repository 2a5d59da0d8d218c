"""A Snakemake dry run changes nothing, yet plans what a real run would do: in a scratch
git + DVC copy of the project trimmed to one experiment, its outputs marked up to date
with `snakemake --touch` (seconds: nothing trains)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from scratch_project import Project, copy_project, snakemake_jobs

pytestmark = pytest.mark.integration


def snapshot(root: Path) -> dict[str, str]:
    """md5 and date of every file a user versions or a real run reads."""
    files = [root / "params.yaml", root / "dvc.lock", *sorted((root / "sources").iterdir())]
    files += sorted((root / ".snakemake" / "hypermeta-params").iterdir())
    return {
        str(path.relative_to(root)): f"{hashlib.md5(path.read_bytes()).hexdigest()} "
        f"{path.stat().st_mtime_ns}"
        for path in files
    }


@pytest.fixture
def project(tmp_path) -> Project:
    copy_project(tmp_path, leave_out=("tests/", "benchmarks/"))
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["experiments"] = {"cnn": params["experiments"]["cnn"]}
    params["references"] = {"cnn": params.get("references", {}).get("cnn", [])}
    params["data"]["datasets"] = {"quick": ["mnist"], "paper": ["mnist"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project = Project(tmp_path)
    project.env["HYPERMETA_TRACKING"] = "off"
    project.init_repository()
    # every stage's outputs, empty: `--touch` dates them as a finished run would
    for folder in ("data/raw", "data/prepared", "models/cnn", "plots/cnn", "reports"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("model.pt", "history.json"):
        (tmp_path / "models/cnn" / name).write_text("")
    (tmp_path / "metrics/cnn").mkdir(parents=True)
    (tmp_path / "metrics/cnn/metrics.json").write_text("{}")
    project.run("snakemake", "--touch", "--cores", "1")
    return project


def test_a_dry_run_changes_nothing_and_plans_what_a_run_would(project):
    before = snapshot(project.root)
    output = project.run("snakemake", "-n", "--cores", "1", "--config", "profile=paper")
    # every stage reads `profile`: all would rerun, yet params.yaml still says quick
    assert snakemake_jobs(output) == {
        "download", "split", "train__cnn", "evaluate__cnn", "visualize__cnn", "report"
    }  # fmt: skip
    assert snapshot(project.root) == before
    assert "Nothing to be done" in project.run("snakemake", "-n", "--cores", "1")

    report = project.root / "src/hypermeta/report.py"
    report.write_text(report.read_text() + "# an edit\n")
    # only the report runs report.py; sources/ is left as it was, for the real run to see
    assert snakemake_jobs(project.run("snakemake", "-n", "--cores", "1")) == {"report"}
    assert snapshot(project.root) == before
