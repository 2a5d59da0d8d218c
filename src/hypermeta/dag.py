"""One DAG, two engines. dvc.yaml is the source of truth; the Snakefile asks this module
for DVC's resolved stages and turns each into a rule, so the engines cannot drift.

Keeping them in step both ways:
- each Snakemake job marks its stage finished; when the run ends (well or not) the
  finished stages are recorded in dvc.lock at once (so `dvc status` is clean);
- dvc.yaml's `sources` stage (what each stage runs, hypermeta.sources) runs when the
  Snakefile builds its DAG rather than as a job, and is committed to dvc.lock there;
- Snakemake sees parameter edits through one small JSON file per stage holding the
  stage's params values; it is rewritten when the values change, but dated to the epoch
  when dvc.lock already records these values, i.e. when `dvc repro` has run the stage
  since (so `snakemake -n` has nothing to do after `dvc repro`);
- a dry run (`snakemake -n`) changes nothing a user versions, nor the per-stage files a
  real run reads: each file that would change is written under DRY_RUN_DIR instead, and
  Snakemake plans with that copy.

Experiment-to-experiment dependencies (`needs:` in params.yaml): every experiment's train
stage depends on its folder `needs/<experiment>`, which holds one small file per needed
experiment, written by a `needs` stage that depends on that experiment's model.pt; the
folder of an experiment that needs none stays empty. DVC cannot give the stages of one
`foreach` a varying number of dependencies (treeverse/dvc#7151), so the edges reach DVC
through needs.yaml, which this module writes from params.yaml (`python -m hypermeta.dag
needs`). Adding an experiment that needs none asks nothing more; after adding or editing a
`needs:`, DVC's first run finds needs.yaml behind (the `sources` stage depends on the
experiments), rewrites it and stops, asking for `dvc repro` again; the Snakefile rewrites it
as it builds its DAG.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hypermeta.atomic import write_json, write_text
from hypermeta.config import SAFE_LOADER, Params
from hypermeta.errors import HypermetaError
from hypermeta.paths import MODELS, NEEDS

PARAMS_DIR = Path(".snakemake/hypermeta-params")
DRY_RUN_DIR = Path(".snakemake/hypermeta-dry-run")
SOURCES_STAGE = "sources"
NEEDS_STAGE = "needs"
NEEDS_FILE = Path("needs.yaml")


@dataclass
class Stage:
    name: str  # DVC address, e.g. "train@cnn"
    cmd: str
    deps: list[str]
    params: list[str]  # params.yaml keys
    outs: list[str]  # products (Snakemake outputs)
    persistent: list[str] = field(default_factory=list)  # kept across runs, never deleted

    @property
    def rule_name(self) -> str:
        return self.name.replace("@", "__").replace("-", "_").replace("+", "__")

    @property
    def experiment(self) -> str | None:
        """The experiment of an experiment's stage (train@cnn: cnn); None for the others,
        including a `needs` edge (needs@leo+pretrain)."""
        group, _, key = self.name.partition("@")
        return key if key and group != NEEDS_STAGE else None


def dvc_stages(root: Path = Path(".")) -> list[Stage]:
    """dvc.yaml's stages with foreach expanded and params interpolated, by DVC itself."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    stages = []
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            params = [
                key for dep in stage.deps if isinstance(dep, ParamsDependency) for key in dep.params
            ]
            deps = [dep.def_path for dep in stage.deps if not isinstance(dep, ParamsDependency)]
            outs = [out.def_path for out in stage.outs if not out.persist]
            persistent = [out.def_path for out in stage.outs if out.persist]
            stages.append(Stage(stage.addressing, stage.cmd, deps, params, outs, persistent))
    return stages


def needs_vars(params: Params) -> dict[str, Any]:
    """What needs.yaml holds: the `needs` edges, one DVC stage each."""
    edges = {
        f"{name}+{needed}": {"experiment": name, "needed": needed}
        for name, entry in params.experiments.items()
        for needed in entry.needs
    }
    return {"needs": edges}


def needs_text(params: Params) -> str:
    header = (
        "# Written by `python -m hypermeta.dag needs` from the `needs:` of params.yaml's\n"
        "# experiments; do not edit (the Snakefile rewrites it; hypermeta/dag.py says why).\n"
    )
    return header + yaml.safe_dump(needs_vars(params), sort_keys=True)


def write_needs(params: Params, root: Path = Path(".")) -> bool:
    """Bring needs.yaml up to date with params.yaml; whether it changed."""
    path = root / NEEDS_FILE
    text = needs_text(params)
    if path.exists() and path.read_text() == text:
        return False
    write_text(path, text)
    return True


def check_needs_file(params: Params, root: Path = Path(".")) -> None:
    """One sentence when needs.yaml does not say what params.yaml's `needs:` say, so DVC
    would order the stages by stale dependencies."""
    path = root / NEEDS_FILE
    if not path.exists() or path.read_text() != needs_text(params):
        raise HypermetaError(
            f"{path} does not match the needs of params.yaml's experiments; run "
            "`python -m hypermeta.dag needs` (the Snakefile does it for you)."
        )


def make_needs_folders(params: Params, root: Path = Path(".")) -> None:
    """Each experiment's needs folder, which its train stage depends on (empty if it needs
    none), so DVC can hash it."""
    for name in params.experiments:
        (root / NEEDS / name).mkdir(parents=True, exist_ok=True)


def prepare_needs(params: Params, root: Path = Path(".")) -> None:
    """The `sources` stage's part in `needs:`: each experiment's needs folder made (its train
    stage depends on it, empty where it needs none), and one sentence where needs.yaml,
    which DVC planned this run from, was behind params.yaml (rewritten now)."""
    make_needs_folders(params, root)
    if write_needs(params, root):
        raise HypermetaError(
            f"{root / NEEDS_FILE} was behind the needs of params.yaml's experiments, and DVC "
            "planned this run from it; it is rewritten now: run `dvc repro` again."
        )


def link_needed(experiment: str, needed: str) -> Path:
    """The `needs` stage: record the md5 of `needed`'s trained model for `experiment`, so
    its train stage reruns exactly when that model changes."""
    from hypermeta.data.download import md5_of

    model = MODELS / needed / "model.pt"
    path = NEEDS / experiment / f"{needed}.json"
    record = {"experiment": experiment, "needs": needed, "model": str(model), "md5": md5_of(model)}
    write_json(path, record)
    return path


def is_directory(path: str) -> bool:
    """Our convention: declared outputs without a file suffix are folders."""
    return Path(path).suffix == ""


def source_files(folder: Path) -> list[str]:
    return sorted(
        str(path)
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )


def snakemake_inputs(stage: Stage, stages: list[Stage]) -> list[str]:
    """Snakemake's view of a stage's dependencies, matching DVC's:
    - a folder holding other stages' outputs (e.g. `metrics`) becomes those outputs;
    - a source folder (e.g. `src/hypermeta`) becomes its files, since DVC hashes their
      content while Snakemake would only see the folder's own date."""
    inputs = []
    for dep in stage.deps:
        inside = [
            out
            for other in stages
            if other is not stage
            for out in other.outs
            if out == dep or out.startswith(dep.rstrip("/") + "/")
        ]
        if not inside and dep.startswith(f"{NEEDS}/"):
            continue  # an experiment that needs none: nothing to wait for
        if not inside and Path(dep).is_dir():
            inside = source_files(Path(dep))
        inputs.extend(inside or [dep])
    return list(dict.fromkeys(inputs))


def lookup(params: dict[str, Any], key: str) -> Any:
    value: Any = params
    for part in key.split("."):
        value = value[part]
    return value


def params_file(
    stage: Stage, params: dict[str, Any], lock: dict[str, Any], dry_run: bool = False
) -> Path:
    """The stage's params values as a file whose date tells Snakemake whether they changed
    (under a dry run, a changed file is written under DRY_RUN_DIR)."""
    values = {key: lookup(params, key) for key in stage.params}
    path = PARAMS_DIR / f"{stage.rule_name}.json"
    text = json.dumps(values, sort_keys=True, indent=1)
    if path.exists() and path.read_text() == text:
        return path
    if dry_run:
        path = DRY_RUN_DIR / path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    locked = lock.get("stages", {}).get(stage.name, {}).get("params", {}).get("params.yaml")
    if locked is not None and json.dumps(locked, sort_keys=True) == json.dumps(
        values, sort_keys=True
    ):
        os.utime(path, (0, 0))  # dvc repro already ran the stage with these values
    return path


def load_lock(root: Path = Path(".")) -> dict[str, Any]:
    path = root / "dvc.lock"
    return yaml.load(path.read_text(), Loader=SAFE_LOADER) or {} if path.exists() else {}


FINISHED_DIR = Path(".snakemake/hypermeta-finished")


def mark_finished_command(stage: str) -> str:
    """Shell step a Snakemake job runs after its stage: remember it for `commit_finished`."""
    return f"mkdir -p {FINISHED_DIR} && touch '{FINISHED_DIR / stage}'"


def commit(stages: list[str], attempts: int = 60) -> None:
    """Record finished stages in dvc.lock, as `dvc commit --force --no-relink` would, but
    loading the DAG and writing dvc.lock once for all of them (`dvc commit` re-parses and
    rewrites the whole lock file per stage: 1.7 minutes for the quick profile's 79).
    Retried while another DVC command holds the repository lock. Not relinking keeps the
    outputs' files, and so their dates, which Snakemake's rerun decisions rest on."""
    from itertools import groupby

    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    for _ in range(attempts):
        try:
            with Repo(".") as repo, lock_repo(repo), params_parsed_once():
                wanted = set(stages)
                found = [stage for stage in repo.index.stages if stage.addressing in wanted]
                missing = wanted - {stage.addressing for stage in found}
                if missing:
                    sys.exit(f"dvc commit: no stage named {sorted(missing)} in dvc.yaml.")
                for stage in found:
                    stage.save()
                    stage.commit(relink=False)
                for dvcfile, group in groupby(found, key=lambda stage: stage.dvcfile):
                    dvcfile.dump_stages(list(group), update_pipeline=False)
            return
        except LockError:
            time.sleep(1)
    sys.exit("dvc commit: the DVC repository stayed locked; run `dvc commit` later.")


@contextmanager
def params_parsed_once() -> Iterator[None]:
    """While it is open, DVC parses each params file once, not once per parameter
    dependency and again for its run cache: committing the quick profile's 79 stages
    parsed the 400-line params.yaml 262 times, about 20 s of the pipeline's end.
    DVC (pinned) reads params files through `dvc.dependency.param.load_path`; each
    caller gets its own copy of the parsed file."""
    from dvc.dependency import param

    original = param.load_path
    parsed: dict[tuple[str, int, int], Any] = {}

    def load_once(path: str, fs: Any, **kwargs: Any) -> Any:
        if kwargs:  # a parse with options: not what the cache holds
            return original(path, fs, **kwargs)
        info = fs.info(path)
        key = (path, info.get("mtime", 0), info["size"])
        if key not in parsed:
            parsed[key] = original(path, fs)
        return copy.deepcopy(parsed[key])

    param.load_path = load_once
    try:
        yield
    finally:
        param.load_path = original


def commit_finished() -> list[str]:
    """Commit the stages Snakemake jobs finished in this run (after success or failure)."""
    if not FINISHED_DIR.exists():
        return []
    markers = sorted(FINISHED_DIR.iterdir())
    stages = [marker.name for marker in markers]
    if stages:
        commit(stages)
    for marker in markers:
        marker.unlink()
    return stages


USAGE = """usage: python -m hypermeta.dag commit STAGE [STAGE ...]
       python -m hypermeta.dag needs                  (rewrite needs.yaml from params.yaml)
       python -m hypermeta.dag link EXPERIMENT NEEDED (dvc.yaml's `needs` stage)"""

if __name__ == "__main__":
    command, arguments = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "commit" and arguments:
        commit(arguments)
    elif command == "needs" and not arguments:
        from hypermeta.config import read_params

        print(f"needs.yaml {'rewritten' if write_needs(read_params()) else 'up to date'}")
    elif command == "link" and len(arguments) == 2:
        link_needed(*arguments)
    else:
        sys.exit(USAGE)
