# Snakemake front end of the pipeline. The DAG itself lives in dvc.yaml: every rule
# below is built from DVC's resolved stages (hypermeta.dag), so the two engines run the
# same jobs. Usage:
#   snakemake --cores all                         # the active profile in params.yaml
#   snakemake --cores all --config profile=paper  # switch profile (edits params.yaml, as dvc exp run -S does)
#   snakemake --profile profiles/slurm            # on a SLURM cluster
# A dry run (-n) changes no file a user versions: it plans with the profile asked for
# and writes what would change under .snakemake/hypermeta-dry-run (hypermeta.dag).
import os
import shutil

import yaml

from hypermeta.config import SAFE_LOADER
from hypermeta.experiments import load_params, resolve, set_profile
from hypermeta.dag import (
    DRY_RUN_DIR,
    SOURCES_STAGE,
    check_needs_file,
    commit,
    commit_finished,
    dvc_stages,
    is_directory,
    load_lock,
    make_needs_folders,
    mark_finished_command,
    params_file,
    snakemake_inputs,
    write_needs,
)
from hypermeta.sources import write_fingerprints
from hypermeta.stages import SHARED_STAGE_THREADS
from hypermeta.stage_server import SOCKET_ENV as STAGE_SOCKET_ENV
from hypermeta.stage_server import start_server as start_stage_server
from hypermeta.stage_server import stop_server as stop_stage_server

DRY_RUN = workflow.output_settings.dryrun
# A cluster job runs Snakemake again on its node (twice: the job and its step) only to
# find its rule: what this file writes and commits below is the main process's to do
# (1.8 CPU-s a start saved; the rules come out the same).
MAIN = workflow.is_main_process
if MAIN:
    shutil.rmtree(DRY_RUN_DIR, ignore_errors=True)
if "profile" in config and not DRY_RUN and MAIN:
    set_profile("params.yaml", config["profile"])
PARAMS = load_params("params.yaml", profile=config.get("profile"))
RAW_PARAMS = {**yaml.load(open("params.yaml"), Loader=SAFE_LOADER), "profile": PARAMS.profile}
# needs.yaml, DVC's view of the experiments' `needs:` (hypermeta.dag), before DVC reads dvc.yaml;
# a dry run plans with it as it is, and says so when it is stale.
if DRY_RUN:
    check_needs_file(PARAMS)
elif MAIN:
    write_needs(PARAMS)
    make_needs_folders(PARAMS)
# dvc.yaml's `sources` stage runs here, as the DAG is built, not as a job: Snakemake reruns
# every job downstream of a job it reruns, whereas a fingerprint file changes (and so
# reruns its stages) only when a file that its stages run does. Committed at once (0.6 s):
# a source edit that changes no fingerprint leaves Snakemake nothing to do, and no end.
# Each stage reads its fingerprint where it was written (under a dry run, not sources/).
WRITTEN = (
    write_fingerprints(instead=DRY_RUN_DIR / "sources" if DRY_RUN else None) if MAIN else {}
)
FINGERPRINTS = {f"sources/{name}": str(path) for name, path in WRITTEN.items()}
if not DRY_RUN and MAIN:
    commit([SOURCES_STAGE])
STAGES = [stage for stage in dvc_stages() if stage.name != SOURCES_STAGE]
LOCK = load_lock()


def resources_of(stage):
    """The experiment's `resources`; `threads` is Snakemake's own keyword, and each stage
    sets torch's threads to it whoever starts it (hypermeta.engine.device.fix_numerics)."""
    if stage.experiment is None:
        return {"mem_mb": 2000, "runtime": 30, "gpu": 0, "threads": SHARED_STAGE_THREADS}
    return resolve(PARAMS, stage.experiment).resources.model_dump()


rule all:
    default_target: True
    input:
        [out for stage in STAGES for out in stage.outs],


for stage in STAGES:

    rule:
        name:
            stage.rule_name
        input:
            [FINGERPRINTS.get(path, path) for path in snakemake_inputs(stage, STAGES)],
            params_file(stage, RAW_PARAMS, LOCK, DRY_RUN),
        output:
            [directory(out) if is_directory(out) else out for out in stage.outs],
        resources:
            **{k: v for k, v in resources_of(stage).items() if k != "threads"},
        threads: resources_of(stage)["threads"]
        params:
            # bound now: Snakemake evaluates `shell:` at job time, after the loop has moved on
            cmd=stage.cmd,
            finished=mark_finished_command(stage.name),
        shell:
            "{params.cmd} && {params.finished}"


STAGE_SERVER = []  # (process, socket path) of this invocation's stage server


onstart:
    # Jobs run here fork from a process that has imported torch already (a job's fixed
    # cost 3.2 s -> 0.55 s, benchmarks/bench_stage_overhead.py);
    # a cluster's jobs start on their nodes as they would by hand (hypermeta.stage_server).
    if workflow.local_exec and not os.environ.get(STAGE_SOCKET_ENV):
        STAGE_SERVER.append(start_stage_server())
        os.environ[STAGE_SOCKET_ENV] = STAGE_SERVER[0][1]
    if os.environ.get("HYPERMETA_TRACKING", "").lower() != "off":
        from hypermeta.paths import repo_root
        from hypermeta.tracking import (
            PARENT_ENV,
            SERVER_ENV,
            URI_ENV,
            invocation_key,
            start_pipeline_run,
        )
        from hypermeta.tracking_server import ensure_server

        # This invocation's own MLflow server (tracking_server.py): jobs log over HTTP,
        # without importing mlflow. One parent run for the invocation; creating it here
        # also creates the store once, before parallel jobs would race to initialise it.
        if not os.environ.get(URI_ENV):
            os.environ[SERVER_ENV] = ensure_server(repo_root(), invocation_key(include_self=True))
        os.environ[PARENT_ENV] = start_pipeline_run(
            repo_root(), PARAMS.mlflow.experiment, PARAMS.profile, "snakemake"
        )


def finish():
    """Record the finished stages in dvc.lock, also after a failure (what completed is
    valid), and stop this invocation's stage and MLflow servers."""
    from hypermeta.paths import repo_root
    from hypermeta.tracking import SERVER_ENV
    from hypermeta.tracking_server import stop_server

    for server, path in STAGE_SERVER:
        stop_stage_server(server, path)
    commit_finished()
    if os.environ.get(SERVER_ENV):
        stop_server(repo_root())


onsuccess:
    finish()


onerror:
    finish()
