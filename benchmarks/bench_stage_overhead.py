"""Fixed cost of a pipeline stage job: a job of a tiny experiment against the same work
done in one process, and where a job's start-up time goes (its import profile).

The project is copied to a scratch folder whose params.yaml holds one tiny experiment
(maml_sine with a few meta-iterations: generated data, nothing to download). Each stage
(train, evaluate, visualize) runs as a job, `python pipeline/<stage>.py tiny`, at one
thread as Snakemake runs it, in four modes:
  warm    as `server`, the job forked by the invocation's stage server, which imported
          torch, numpy and matplotlib once (what Snakemake does on one machine),
  server  logging over HTTP to the invocation's `mlflow server` (`dvc repro`),
  sqlite  no server: mlflow's client on the project's sqlite store (a stage run by hand),
  off     HYPERMETA_TRACKING=off;
and then the same stages in one process, imports paid once, logging to the same server.
Fixed cost per job = median job time - median in-process time of that stage.

Usage: python benchmarks/bench_stage_overhead.py [--quick] [--against REVISION]
(--against: also measure that git revision, e.g. the commit before a change, in the same
run, taking turns with this checkout; a revision without the pipeline server has no
"server" mode.)
Prints a table and writes benchmarks/results/stage_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STAGES = ("train", "evaluate", "visualize")
# Two tiny experiments: a classifier (the common path) and MAML on sine, whose vmapped
# inner loop takes gradients with torch.func, which imports torch._dynamo.
TINY = {
    "tiny_cnn": {
        "method": "cnn",
        "dataset": "mnist",
        "model": {"filters": 4, "kernel_size": 3},
        "train": {"epochs": 1, "batch_size": 64, "max_train_examples": 256, "device": "cpu"},
    },
    "tiny_sine": {
        "method": "maml_regression",
        "dataset": "sine",
        "model": {"mlp_hidden": [40, 40], "inner_steps": 1, "inner_lr": 0.01},
        "train": {"meta_iterations": 20, "meta_batch": 5, "k_shot": 10, "n_query": 10,
                  "outer_lr": 0.001, "log_every": 10, "checkpoint_every": 10, "device": "cpu"},
        "eval": {"shots": [5], "n_tasks": 20, "steps": [0, 1]},
    },
}  # fmt: skip


def scratch_project(source: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=source, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="hypermeta-bench-"))
    for name in files:
        if (source / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update(profile="quick", experiments=TINY, references={})
    params["data"]["datasets"] = {name: ["mnist", "sine"] for name in params["profiles"]}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def job_env(
    root: Path, mode: str, server: str | None, stage_socket: str | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERMETA_", "MLFLOW_"))}
    if os.environ.get("HYPERMETA_DATA_MIRROR"):
        env["HYPERMETA_DATA_MIRROR"] = os.environ["HYPERMETA_DATA_MIRROR"]
    env.update(PYTHONPATH=str(root / "src"), OMP_NUM_THREADS="1")
    if mode == "off":
        env["HYPERMETA_TRACKING"] = "off"
    elif mode in ("server", "warm"):
        env["HYPERMETA_MLFLOW_SERVER"] = server or ""
    if mode == "warm":
        env["HYPERMETA_STAGE_SERVER"] = stage_socket or ""
    return env


def run_job(root: Path, stage: str, experiment: str, env: dict[str, str]) -> float:
    if stage == "train":
        shutil.rmtree(root / "models" / experiment, ignore_errors=True)  # else it resumes
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, f"pipeline/{stage}.py", experiment], cwd=root, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if done.returncode:
        sys.exit(f"{stage} {experiment} failed in {root}:\n{done.stderr[-2000:]}")
    return time.perf_counter() - began


IN_PROCESS = """
import json, shutil, sys, time
import importlib
import torch
torch.set_num_threads(1)
from hypermeta import cli
def function(stage):  # where the stage's function lives (all in hypermeta.stages, before)
    module = cli.STAGES[stage] if isinstance(cli.STAGES, dict) else "hypermeta.stages"
    return getattr(importlib.import_module(module), stage)
rounds, experiments, names = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
times = {e: {stage: [] for stage in names} for e in experiments}
for _ in range(rounds):
    for experiment in experiments:
        for stage in names:
            if stage == "train":
                shutil.rmtree(f"models/{experiment}", ignore_errors=True)
            began = time.perf_counter()
            function(stage)(experiment)
            times[experiment][stage].append(time.perf_counter() - began)
print(json.dumps(times))
"""


def in_process(root: Path, repeats: int, env: dict[str, str]) -> dict[str, dict[str, list]]:
    out = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, str(repeats + 1), ",".join(TINY), *STAGES],
        cwd=root, env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    times = json.loads(out.strip().splitlines()[-1])
    # the first round pays the imports and the first calls
    return {e: {s: v[1:] for s, v in stages.items()} for e, stages in times.items()}


def import_profile(
    root: Path, stage: str, experiment: str, env: dict[str, str], top: int = 6
) -> list[tuple[str, float]]:
    """Cumulative import seconds of the top-level imports of one job."""
    if stage == "train":
        shutil.rmtree(root / "models" / experiment, ignore_errors=True)
    err = subprocess.run(
        [sys.executable, "-X", "importtime", f"pipeline/{stage}.py", experiment],
        cwd=root, env=env, capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    cumulative: dict[str, float] = {}
    for line in err.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line)  # unindented
        if match:
            cumulative[match.group(2)] = (
                cumulative.get(match.group(2), 0.0) + int(match.group(1)) / 1e6
            )
    return sorted(cumulative.items(), key=lambda item: -item[1])[:top]


def export_revision(revision: str) -> Path:
    """A checkout of `revision` of this repository, to measure the same way."""
    folder = Path(tempfile.mkdtemp(prefix="hypermeta-rev-"))
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "archive", revision], cwd=repo, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run(["git", "add", "-A"], cwd=folder, check=True)
    return folder


def prepare(source: Path) -> Path:
    root = scratch_project(source)
    # needs.yaml, DVC's view of the experiments' needs, rewritten for the tiny ones
    commands = {"needs": ["-m", "hypermeta.dag", "needs"]}
    commands |= {step: [f"pipeline/{step}.py"] for step in ("download", "split")}
    for step, arguments in commands.items():
        env = job_env(root, "off", None)
        command = [sys.executable, *arguments]
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{step} failed in {root} (is HYPERMETA_DATA_MIRROR set?):\n{done.stderr}")
    return root


def start_server(root: Path, watched: subprocess.Popen) -> str | None:
    """The pipeline's server for `root`, if its code has one (started by its own code)."""
    import psutil

    created = f"{psutil.Process(watched.pid).create_time():.0f}"
    code = (
        "import sys; from pathlib import Path\n"
        "try:\n    from hypermeta.tracking_server import ensure_server\n"
        "except ImportError:\n    sys.exit(3)\n"
        f"print(ensure_server(Path('.'), 'bench-{watched.pid}-{created}'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                            text=True, env=job_env(root, "off", None))  # fmt: skip
    if result.returncode == 3:
        return None
    result.check_returncode()
    return result.stdout.strip()


def start_stage_server(root: Path) -> tuple[subprocess.Popen, str] | None:
    """A stage server running `root`'s code, if it has one; it ends with this process."""
    if not (root / "src" / "hypermeta" / "stage_server.py").exists():
        return None
    from hypermeta.stage_server import start_server as start

    return start(env=job_env(root, "off", None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument(
        "--against", metavar="REVISION", help="also measure this git revision, taking turns"
    )
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    sources = {"this checkout": Path(__file__).resolve().parents[1]}
    if args.against:
        sources[args.against] = export_revision(args.against)
    roots = {code: prepare(source) for code, source in sources.items()}
    watched = subprocess.Popen(["sleep", "7200"])  # stands in for the invocation's process
    stage_servers: dict[str, tuple[subprocess.Popen, str] | None] = {}
    try:
        servers = {code: start_server(root, watched) for code, root in roots.items()}
        stage_servers = {code: start_stage_server(root) for code, root in roots.items()}
        available = {"server": servers, "warm": stage_servers}
        runs = [(code, mode) for code in roots for mode in ("warm", "server", "sqlite", "off")
                if mode not in available or available[mode][code]]  # fmt: skip
        jobs = {run: {e: {s: [] for s in STAGES} for e in TINY} for run in runs}
        for _ in range(repeats):  # everything takes turns, so load falls on all alike
            for code, mode in runs:
                socket_path = stage_servers[code][1] if stage_servers[code] else None
                env = job_env(roots[code], mode, servers[code], socket_path)
                for experiment in TINY:
                    for stage in STAGES:
                        seconds = run_job(roots[code], stage, experiment, env)
                        jobs[code, mode][experiment][stage].append(seconds)
        reference = {
            code: job_env(root, "server" if servers[code] else "sqlite", servers[code])
            for code, root in roots.items()
        }
        alone = {code: in_process(root, repeats, reference[code]) for code, root in roots.items()}
        profiles = {
            f"{code}: {stage} {experiment}": import_profile(
                root, stage, experiment, reference[code]
            )
            for code, root in roots.items()
            for experiment in TINY
            for stage in STAGES
        }
    finally:
        watched.kill()
        from hypermeta.stage_server import stop_server

        for started in stage_servers.values():
            if started:
                stop_server(*started)

    median = statistics.median
    rows = []
    for code, mode in runs:
        for experiment in TINY:
            for stage in STAGES:
                job = median(jobs[code, mode][experiment][stage])
                work = median(alone[code][experiment][stage])
                rows.append({"code": code, "mode": mode, "experiment": experiment,
                             "stage": stage, "job_s": job, "in_process_s": work,
                             "fixed_cost_s": job - work})  # fmt: skip
    print(f"{'code':14s} {'mode':7s} {'experiment':10s} {'stage':10s} {'job s':>6s} "
          f"{'in-process s':>13s} {'fixed cost s':>13s}")  # fmt: skip
    for row in rows:
        print(
            f"{row['code']:14s} {row['mode']:7s} {row['experiment']:10s} {row['stage']:10s} "
            f"{row['job_s']:6.2f} {row['in_process_s']:13.2f} {row['fixed_cost_s']:13.2f}"
        )
    summary = {}
    for code, mode in runs:
        costs = [r["fixed_cost_s"] for r in rows if (r["code"], r["mode"]) == (code, mode)]
        summary[f"{code}, {mode}"] = median(costs)
        print(
            f"median fixed cost per job ({len(costs)} jobs), {code}, {mode}: {median(costs):.2f} s"
        )
    print("import profile (cumulative s of top-level imports):")
    for job, profile in profiles.items():
        print(f"  {job:36s} " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in profile))
    result = {
        "benchmark": "stage_overhead",
        "against": args.against,
        "repeats": repeats,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "rows": rows,
        "median_fixed_cost_s": summary,
        "import_profile_s": {job: dict(profile) for job, profile in profiles.items()},
    }
    out = Path(__file__).parent / "results" / "stage_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for folder in [*roots.values(), *list(sources.values())[1:]]:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
