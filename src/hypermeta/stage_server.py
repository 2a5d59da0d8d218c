"""A warm start for the pipeline's jobs under Snakemake: one process per invocation that
has imported the heavy third-party libraries (torch, numpy, matplotlib, pydantic: 1.2 to
2.5 s of a quick job's 2-5 s on a 2-core CPU, paid by each of ~160 jobs) and forks a
child per job, which then runs the job's script exactly as `python <script> <args>`
would, in the job's directory, with its environment, arguments, stdin, stdout and stderr.

Only third-party libraries are preloaded: the project's own modules are imported by each
child as it starts, so a job runs the project's files as they are then (what its
fingerprint in sources/ says it runs, hypermeta.sources).

The job's own process (the client, `run_in_server`) stays what Snakemake started and
waits: it forwards SIGTERM, SIGINT and SIGHUP to the child and ends with the child's exit
status (a child ended by a signal ends it by the same signal). When the client dies, even
by SIGKILL, the server kills its child. The server runs in a session of its own (no
terminal's Ctrl-C reaches it, only forwarded signals reach a child) and ends when its
parent, the Snakemake process that started it, does. Without a server (`dvc repro`, a
hand run, a cluster job on another node) a script runs in its own process as always.

Start: `start_server()` (the Snakefile's onstart, local runs only); the socket's path is
exported in HYPERMETA_STAGE_SERVER, which children run without.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

SOCKET_ENV = "HYPERMETA_STAGE_SERVER"
# what most jobs import: torch.func brings torch._dynamo (1.1 s, the meta-learners'), the
# CIs scipy.special; not mlflow (its import starts a thread, which a fork would not copy)
PRELOADED = (
    "torch", "torch.func", "torch._dynamo", "numpy", "scipy.special", "matplotlib",
    "matplotlib.pyplot", "pydantic", "yaml", "tqdm", "threadpoolctl",
)  # fmt: skip
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
MAX_MESSAGE = 1 << 20
START_TIMEOUT_S = 30


def run_in_server() -> int | None:
    """Run this process's script (sys.argv) in the server named by HYPERMETA_STAGE_SERVER
    and return its exit status; None when there is no server to run it, or it runs
    another Python (the caller then runs the script itself)."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        client.connect(path)
    except OSError:
        client.close()
        return None
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    request = {
        "executable": sys.executable,
        "argv": [os.path.abspath(sys.argv[0]), *sys.argv[1:]],
        "cwd": os.getcwd(),
        "env": env,
    }
    with client:
        try:  # fails where a stream is closed (no stdin): the job then runs by itself
            socket.send_fds(client, [json.dumps(request).encode()], [0, 1, 2])
            started = json.loads(client.recv(MAX_MESSAGE) or b"{}")
        except OSError:
            return None
        if "pid" not in started:  # refused (another Python) or the server went away
            return None
        child = started["pid"]

        def forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

        for signum in FORWARDED:
            signal.signal(signum, forward)
        ended = json.loads(client.recv(MAX_MESSAGE) or b'{"exit": 1}')
    code = ended["exit"]
    if code < 0:  # ended by a signal: end the same way, as Snakemake would see it
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the job's process, run its script, never return."""
    code = 1
    try:
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        # the process's own streams, buffered as Python buffers them (stderr by line)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # the thread pools the preloaded libraries sized by the server's environment, sized
        # by the job's as its own imports would (numpy's OpenBLAS spins its idle threads)
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            from threadpoolctl import threadpool_limits

            threadpool_limits(int(threads))
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(int(threads))
        script = request["argv"][0]
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(script)
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException as exc:
        # the traceback Python would print, from the script's frame on (not runpy's)
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != request["argv"][0]:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb or exc.__traceback__)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(path: str) -> None:
    """Listen on `path`, preload, and fork a child per request until the parent ends."""
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)  # bound first: a job that connects now waits in the backlog
    listener.listen(64)
    for module in PRELOADED:
        with contextlib.suppress(ImportError):  # what is missing, each job imports (or not)
            if module == "matplotlib.pyplot":
                import matplotlib

                matplotlib.use("Agg")  # as hypermeta.viz does: no display on a pipeline node
            __import__(module)
    children: dict[int, socket.socket] = {}  # child pid -> its client's connection
    while not stopping and os.getppid() == parent:
        readable, _, _ = select.select([listener, *children.values()], [], [], 0.2)
        for ready in readable:
            if ready is listener:
                _accept(listener, children)
            else:  # a client's connection is readable only once it has closed: it died
                pid = next(p for p, conn in children.items() if conn is ready)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _reap(children)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    listener.close()
    with contextlib.suppress(OSError):
        os.unlink(path)
        os.rmdir(os.path.dirname(path))  # start_server's folder, now empty


def _accept(listener: socket.socket, children: dict[int, socket.socket]) -> None:
    conn, _ = listener.accept()
    try:
        message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
        request = json.loads(message)
    except (OSError, ValueError):
        conn.close()
        return
    if request.get("executable") != sys.executable or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.send(b'{"refused": "another Python"}')
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        listener.close()
        for other in children.values():
            other.close()
        conn.close()
        _run_child(request, fds)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    conn.send(json.dumps({"pid": pid}).encode())


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode())
            conn.close()


def start_server(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server for this process's jobs (in `env`, default this process's: its
    PYTHONPATH says whose code it runs); returns it and its socket's path, which the
    caller exports in HYPERMETA_STAGE_SERVER (a short path: sockets allow 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="hypermeta-stages-")
    path = os.path.join(folder, "socket")
    server = subprocess.Popen(
        [sys.executable, "-m", "hypermeta.stage_server", path],
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not os.path.exists(path) and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return server, path


def stop_server(server: subprocess.Popen, path: str) -> None:
    server.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=10)
    if server.poll() is None:
        server.kill()
    shutil.rmtree(Path(path).parent, ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1])
