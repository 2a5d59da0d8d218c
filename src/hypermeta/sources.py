"""What each pipeline stage runs, as source files with their md5: one small JSON file per
stage kind and method (`sources/train-protonet.json`), which dvc.yaml's stages depend on
instead of all of src/hypermeta. Editing report.py then reruns only the report; editing
protonet.py only the stages of protonet's experiments.

A stage's files are the static import closure of its roots (every `import` of a project
module in a file, at module level or inside a function, read with `ast`: nothing runs):
- its script, pipeline/<stage>.py, and the module holding its function (cli.STAGES);
- per experiment, its method's module and its kind's engine module (train, evaluate) or
  plotter module (visualize); the report, every method, engine and plotter module (it
  tabulates and draws every group); split, every dataset reader (data.prepare).
The registries (methods, engine, plots, the dataset readers) import their modules in a
loop the closure does not follow; the roots above say which of them a stage runs. A stage
does import more at run time: `load_params` resolves every experiment, importing every
method, to validate params.yaml. That can fail a stage but not change what it writes, so
it is not part of the fingerprint.

`python -m hypermeta.sources` writes the files (dvc.yaml's `sources` stage); the Snakefile
calls `write_fingerprints` when it builds its DAG. A file is rewritten only when its
content changes, so that its date, which Snakemake goes by, moves only then.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from hypermeta.atomic import write_text

FOLDER = Path("sources")
PER_EXPERIMENT = ("train", "evaluate", "visualize")


def module_file(module: str, src: Path) -> Path | None:
    """The file of a project module under `src`, or None for a module from elsewhere."""
    base = src.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module an `import` in the file names (with the packages above it, whose
    __init__ runs first), wherever in the file the import is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package upwards
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # maybe modules
    return names | {package for name in names for package in _packages_above(name)}


def closure(
    roots: Iterable[str],
    root: Path = Path("."),
    parsed: dict[Path, list[tuple[Path, str]]] | None = None,
) -> list[str]:
    """The project files that importing `roots` (module names, or script paths relative
    to `root`) runs, as sorted paths relative to `root`. `parsed` keeps each file's
    imported project files for the next call (every stage's closure reads mostly the same
    files, and finding them is most of the work)."""
    parsed = {} if parsed is None else parsed
    src = root / "src"
    todo: list[tuple[Path, str]] = []
    for name in roots:
        if name.endswith(".py"):
            todo.append((root / name, ""))
        else:
            todo.extend(
                (path, module)
                for module in (*_packages_above(name), name)
                if (path := module_file(module, src)) is not None
            )
    seen: set[Path] = set()
    while todo:
        path, module = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path not in parsed:
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            parsed[path] = [
                (found, name)
                for name in imported_modules(path, package)
                if (found := module_file(name, src)) is not None
            ]
        todo.extend((found, name) for found, name in parsed[path] if found not in seen)
    return sorted(str(path.relative_to(root)) for path in seen)


def _packages_above(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def stage_roots(stage: str, method: str | None = None) -> list[str]:
    """What stage `stage` (of an experiment using `method`) runs: the closure's roots."""
    from hypermeta.cli import STAGES
    from hypermeta.engine import ENGINES
    from hypermeta.methods import METHODS
    from hypermeta.plots import PLOTTERS

    roots = [f"pipeline/{stage}.py", STAGES[stage]]
    if method is not None:
        kind = METHODS[method].kind
        registry = PLOTTERS if stage == "visualize" else ENGINES
        roots += [METHODS.module_of(method), registry.module_of(kind)]
    elif stage == "report":
        roots += [r.module_of(name) for r in (METHODS, PLOTTERS, ENGINES) for name in r]
    elif stage == "split":
        from hypermeta.data.prepare import READER_MODULES

        roots += [f"hypermeta.data.{reader}" for reader in READER_MODULES]
    return roots


def fingerprints(root: Path = Path(".")) -> dict[str, dict[str, str]]:
    """File name in FOLDER → {source file: md5} of every stage kind, per method where the
    stage runs per experiment."""
    from hypermeta.cli import STAGES
    from hypermeta.methods import METHODS

    wanted = {
        f"{stage}-{method}.json" if method else f"{stage}.json": stage_roots(stage, method)
        for stage in STAGES
        for method in (sorted(METHODS) if stage in PER_EXPERIMENT else [None])
    }
    parsed: dict[Path, list[tuple[Path, str]]] = {}
    md5 = {
        str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest()
        for folder in ("src", "pipeline")
        for path in (root / folder).rglob("*.py")
    }
    return {
        name: {path: md5[path] for path in closure(roots, root, parsed)}
        for name, roots in wanted.items()
    }


def write_fingerprints(root: Path = Path("."), instead: Path | None = None) -> dict[str, Path]:
    """Write FOLDER's files, each only when its content changes, and delete those of
    methods that are gone. Returns the files written, by name. With `instead` (a dry run,
    which must change nothing a user versions) FOLDER is left as it is and each file
    that would change is written into `instead`."""
    folder = root / FOLDER
    written = {}
    wanted = fingerprints(root)
    for name, files in wanted.items():
        path = folder / name
        text = json.dumps(files, indent=1, sort_keys=True) + "\n"
        if not path.exists() or path.read_text() != text:
            written[name] = path if instead is None else instead / name
            write_text(written[name], text)
    if instead is None:
        for path in folder.iterdir():
            if path.name not in wanted:
                path.unlink()
    return written


if __name__ == "__main__":
    from hypermeta.config import read_params
    from hypermeta.dag import prepare_needs
    from hypermeta.errors import HypermetaError

    try:  # DVC's `sources` stage also readies what `needs:` asks of the DAG (hypermeta.dag)
        prepare_needs(read_params())
    except HypermetaError as exc:
        raise SystemExit(f"[hypermeta] {exc}") from None
    changed = write_fingerprints()
    print(f"[hypermeta] sources: {len(changed)} fingerprints changed")
