"""The stage server runs a job's script as `python <script> <args>` would: same output,
exit status, directory and environment; signals reach the job, and a job whose process
dies goes with it (hypermeta.stage_server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypermeta.stage_server import SOCKET_ENV, start_server, stop_server

JOB = """\
import os, signal, sys, time
from hypermeta.stage_server import run_in_server

code = run_in_server()
if code is not None:
    sys.exit(code)
print("cwd", os.getcwd(), "argv", sys.argv[1:], "flag", os.environ.get("FLAG"),
      "server", os.environ.get("HYPERMETA_STAGE_SERVER"), "torch", "torch" in sys.modules)
print("to stderr", file=sys.stderr)
action = sys.argv[1]
if action == "raise":
    raise ValueError("a failing job")
if action == "threads":  # torch's and numpy's BLAS threads follow the job's OMP_NUM_THREADS
    import numpy, threadpoolctl, torch

    blas = {pool["num_threads"] for pool in threadpoolctl.threadpool_info()
            if pool["user_api"] == "blas"}  # the server also loaded scipy's own
    print("threads", torch.get_num_threads(), "blas", blas)
if action == "exit":
    sys.exit(int(sys.argv[2]))
if action == "wait":
    signal.signal(signal.SIGTERM, lambda *_: (open("terminated", "w").close(), sys.exit(7)))
    open("job.pid", "w").write(str(os.getpid()))
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def server():
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("OMP_NUM_THREADS", raising=False)  # the server's torch: one per core
        process, path = start_server()
    yield path
    stop_server(process, path)
    assert process.poll() is not None and not Path(path).exists()


def run_job(folder: Path, *args: str, server: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLAG": "set", "OMP_NUM_THREADS": "1"}  # the server's: unset
    env.pop(SOCKET_ENV, None)
    if server:
        env[SOCKET_ENV] = server
    return subprocess.run(
        [sys.executable, "job.py", *args], cwd=folder, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize("args", [("print",), ("raise",), ("exit", "3"), ("threads",)])
def test_a_job_in_the_server_is_the_job_run_by_hand(tmp_path, server, args):
    (tmp_path / "job.py").write_text(JOB)
    by_hand, served = run_job(tmp_path, *args), run_job(tmp_path, *args, server=server)
    assert served.returncode == by_hand.returncode == {"raise": 1, "exit": 3}.get(args[0], 0)
    # the same output but for the preloaded torch; the server's address is not passed on
    assert served.stdout == by_hand.stdout.replace("torch False", "torch True")
    assert f"cwd {tmp_path} argv {list(args)} flag set server None" in served.stdout
    assert served.stderr == by_hand.stderr
    assert ("ValueError: a failing job" in served.stderr) == (args[0] == "raise")
    assert ("threads 1 blas {1}" in served.stdout) == (args[0] == "threads")


def alive(pid: int) -> bool:
    try:  # a zombie has ended: only its parent's wait is missing
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until_ended(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), f"process {pid} still runs"


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path.name} was not written"


def test_sigterm_to_the_job_reaches_it_and_its_status_comes_back(tmp_path, server):
    (tmp_path / "job.py").write_text(JOB)
    env = {**os.environ, SOCKET_ENV: server}
    job = subprocess.Popen([sys.executable, "job.py", "wait"], cwd=tmp_path, env=env)
    wait_for(tmp_path / "job.pid")
    job.terminate()
    assert job.wait(timeout=30) == 7  # the job's own SIGTERM handler ran, in the child
    assert (tmp_path / "terminated").exists()


def test_a_job_killed_outright_takes_its_child_with_it(tmp_path, server):
    (tmp_path / "job.py").write_text(JOB)
    env = {**os.environ, SOCKET_ENV: server}
    job = subprocess.Popen([sys.executable, "job.py", "wait"], cwd=tmp_path, env=env)
    wait_for(tmp_path / "job.pid")
    child = int((tmp_path / "job.pid").read_text())
    assert child != job.pid  # it did run in the server
    job.kill()
    job.wait(timeout=30)
    wait_until_ended(child)


def test_without_a_server_listening_the_job_runs_in_its_own_process(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    result = run_job(tmp_path, "print", server=str(tmp_path / "no-such-socket"))
    assert result.returncode == 0 and "torch False" in result.stdout


def test_the_server_ends_with_the_process_that_started_it(tmp_path):
    script = (
        "from hypermeta.stage_server import start_server\n"
        "process, path = start_server()\n"
        "print(process.pid, flush=True)\n"
    )  # exits at once, leaving its server without a parent
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    wait_until_ended(int(output.stdout))


def test_a_job_without_stdin_still_runs(tmp_path, server):
    (tmp_path / "job.py").write_text(JOB)
    env = {**os.environ, SOCKET_ENV: server}
    result = subprocess.run(
        [sys.executable, "job.py", "print"], cwd=tmp_path, env=env, capture_output=True,
        text=True, preexec_fn=lambda: os.close(0),  # no descriptor 0 to pass on
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "argv ['print'] flag None server None" in result.stdout
