"""The pipeline's own MLflow tracking server: one `mlflow server` on 127.0.0.1 over the
project's sqlite store, for the duration of one pipeline invocation (a `snakemake` or a
`dvc repro`), so that stage jobs log over HTTP (tracking.HttpStore) instead of each one
importing mlflow and its SQLAlchemy store (2-4 s a job).

The first process of an invocation that needs it (the Snakefile's onstart, or the first
stage job under `dvc repro`) starts a supervisor, `python -m hypermeta.tracking_server`,
in a session of its own; the supervisor runs the server and stops it once the
invocation's process has ended (the Snakefile also stops it as it ends). Which server
belongs to which invocation is written to `.hypermeta/mlflow-server.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from hypermeta.errors import HypermetaError

STATE = Path(".hypermeta/mlflow-server.json")
LOG = Path(".hypermeta/mlflow-server.log")
START_TIMEOUT_S = 120


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _read_state(root: Path) -> dict | None:
    try:
        return json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_server(root: Path, invocation: str) -> str:
    """The URI of `invocation`'s server, started now if it has none (see the docstring).
    `invocation` is tracking.invocation_key()'s "<engine>-<pid>-<start time>"."""
    from filelock import FileLock

    from hypermeta.atomic import write_json

    root = Path(root).resolve()
    (root / STATE).parent.mkdir(exist_ok=True)
    with FileLock(str(root / STATE) + ".lock"):
        state = _read_state(root)
        if state and state["invocation"] == invocation and _healthy(state["uri"]):
            return state["uri"]
        port = _free_port()
        uri = f"http://127.0.0.1:{port}"
        _, pid, started = invocation.rsplit("-", 2)
        with (root / LOG).open("ab") as log:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "hypermeta.tracking_server", str(root), str(port), pid,
                 started],
                cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,  # outlives the job that starts it; not its signals
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(uri):
            if supervisor.poll() is not None or time.monotonic() > deadline:
                supervisor.kill()
                raise HypermetaError(
                    f"the pipeline's MLflow server did not start on {uri} (its log: "
                    f"{root / LOG}); fix what the log says, or set MLFLOW_TRACKING_URI to a "
                    "running server."
                )
            time.sleep(0.2)
        # the server's first API call loads its handlers (about 1 s): not a job's to pay
        urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1").close()
        write_json(root / STATE, {"invocation": invocation, "uri": uri, "pid": supervisor.pid})
        return uri


def stop_server(root: Path) -> None:
    """Stop this project's pipeline server, if one runs (the supervisor stops its server)."""
    root = Path(root).resolve()
    state = _read_state(root)
    if state is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(state["pid"], signal.SIGTERM)
    (root / STATE).unlink(missing_ok=True)


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with MLflow's job execution off: without it each `mlflow
    server` also starts four Huey consumers for GenAI jobs this project never submits, which
    poll at about a third of a core together (20 CPU-s a minute idle, measured here)."""
    return {**(os.environ if base is None else base), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _supervise(root: Path, port: int, watched_pid: int, watched_start: str) -> None:
    """Run the server until the watched invocation ends or we are told to stop."""
    import psutil

    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--default-artifact-root", (root / "mlartifacts").as_uri()],
        cwd=root, stdin=subprocess.DEVNULL, start_new_session=True, env=server_environment(),
    )  # fmt: skip
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))

    def watched_alive() -> bool:
        try:
            process = psutil.Process(watched_pid)
            return f"{process.create_time():.0f}" == watched_start
        except psutil.Error:
            return False

    try:
        while not stopping and server.poll() is None and watched_alive():
            time.sleep(0.5)
    finally:
        state = _read_state(root)  # first, so that no job is sent to a stopping server
        if state and state.get("pid") == os.getpid():
            (root / STATE).unlink(missing_ok=True)
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # mlflow and its uvicorn workers
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    _root, _port, _pid, _start = sys.argv[1:]
    _supervise(Path(_root), int(_port), int(_pid), _start)
