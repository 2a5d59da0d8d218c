"""What the integration tests share: a scratch git + DVC copy of the project, run with the
real tools, and a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import MIRROR, ROOT

from hypermeta.dag import Stage
from hypermeta.tracking_server import server_environment

BIN = Path(sys.executable).parent


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.first_results: dict[str, str] = {}  # md5 per file, before the `dvc repro` edit
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("HYPERMETA_", "MLFLOW_"))},
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "PYTHONPATH": str(root / "src"),
            "HYPERMETA_DATA_MIRROR": str(MIRROR),
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.com",
        }

    def run(self, *args: str, timeout: int = 900) -> str:
        result = subprocess.run(
            args, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{output[-4000:]}"
        return output

    def init_repository(self, dvc: bool = True, commit: str | None = None) -> None:
        """`git init` (and `dvc init` without analytics); with `commit`, commit every file."""
        self.run("git", "init", "-q")
        if dvc:
            self.run(sys.executable, "-m", "dvc", "init", "-q")
            self.run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
        if commit:
            self.run("git", "add", "-A")
            self.run("git", "commit", "-qm", commit)

    def edit_params(self, experiment: str, **train) -> None:
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        quick = params["experiments"][experiment]["profiles"]["quick"]
        quick["train"].update(train)
        path.write_text(yaml.safe_dump(params, sort_keys=False))


def snakemake_jobs(output: str) -> set[str]:
    """Rule names from the 'Job stats' table of a Snakemake run or dry run."""
    table = output.split("Job stats:")[1].split("total")[0]
    return {line.split()[0] for line in table.splitlines()[3:] if line.strip()} - {"all"}


def rules(stages: set[str]) -> set[str]:
    """Snakemake's rule names of DVC's stage names."""
    return {Stage(name, "", [], [], []).rule_name for name in stages}


def copy_project(root: Path, leave_out: tuple[str, ...] = ()) -> None:
    """The project's files as git sees them (tracked, or untracked and not ignored),
    without its DVC state, into `root`; paths starting with `leave_out` are left out."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(leave_out):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    shutil.rmtree(root / ".dvc", ignore_errors=True)
    (root / "dvc.lock").unlink(missing_ok=True)


def subset_project(
    root: Path,
    experiments: tuple[str, ...],
    datasets: list[str],
    env: dict[str, str] | None = None,
    quick: dict[str, dict] | None = None,
) -> Project:
    """A git + DVC copy of the project whose params.yaml holds `experiments` alone (so that
    the report, `dvc status` and `snakemake -n` see a whole pipeline), the quick profile
    preparing `datasets`; `quick` adds keys to named experiments' quick profiles."""
    if not (MIRROR / "README.md").exists():
        pytest.fail(f"the offline data mirror {MIRROR} is missing; set HYPERMETA_DATA_MIRROR")
    copy_project(root)
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["experiments"] = {name: params["experiments"][name] for name in experiments}
    kept = set(experiments) | {entry.get("group") for entry in params["experiments"].values()}
    params["references"] = {k: v for k, v in params["references"].items() if k in kept}
    params["data"]["datasets"]["quick"] = datasets
    for name, keys in (quick or {}).items():
        params["experiments"][name]["profiles"]["quick"].update(keys)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    project = Project(root)
    project.env.update(env or {})
    project.init_repository(commit="the subset under test")
    return project


def digests(root: Path, paths: list[str]) -> dict[str, str]:
    """md5 of every file under each path (a file or a folder), but Snakemake's empty marker
    of a finished folder, which DVC ignores (.dvcignore) and so never restores."""
    found = {}
    for path in paths:
        files = [root / path] if (root / path).is_file() else sorted((root / path).rglob("*"))
        for file in files:
            if file.is_file() and file.name != ".snakemake_timestamp":
                found[str(file.relative_to(root))] = hashlib.md5(file.read_bytes()).hexdigest()
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(
    *store_args: str, cwd: Path | None = None, env: dict[str, str] | None = None, wait_s: int = 120
) -> Iterator[str]:
    """A real `mlflow server` on a free port of 127.0.0.1 with the given store arguments
    (`--backend-store-uri ...`); yields its URL once /health answers, stops it after."""
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), *store_args],
        cwd=cwd, env=server_environment(env), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(2 * wait_s):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not come up on 127.0.0.1 within {wait_s} s")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
