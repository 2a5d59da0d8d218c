"""The layers of docs/ARCHITECTURE.md hold: no module of src/hypermeta imports, directly
or through others, a module that imports it back. Every import counts, at module level
or inside a function, and importing `a.b.c` counts as importing the packages `a.b` and
`a` too, since Python runs their `__init__` first. (The registries import their
packages' modules on first use, at run time: hypermeta.registry.)"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    # packages whose __init__ imports nothing of hypermeta: running it pulls nothing in
    inert = {
        name
        for name, path in known.items()
        if path.name == "__init__.py"
        and "import hypermeta" not in path.read_text()
        and "from hypermeta" not in path.read_text()
    }
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                module = owner(target) if target.startswith("hypermeta") else None
                if module and module != name:
                    graph[name].add(module)  # its own package too, e.g. for `register`
                while module and module != "hypermeta":  # and the packages above it
                    module = module.rpartition(".")[0]
                    if module in inert or module == name or name.startswith(module + "."):
                        continue
                    graph[name].add(module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_imports_of_every_form():
    graph = import_graph()
    assert "hypermeta.errors" in graph["hypermeta.cli"]  # from hypermeta.errors import …
    assert "hypermeta.engine" in graph["hypermeta.stages"]  # a package, through its module
    assert "hypermeta.data.registry" in graph["hypermeta.config"]  # inside a function
    assert "hypermeta.methods" in graph["hypermeta.methods.protonet"]  # its own package


def test_no_module_imports_itself_through_others():
    assert cycles(import_graph()) == []


# docs/ARCHITECTURE.md's layers, bottom first: a module imports only from its own layer
# and those below. The most specific prefix places a module.
LAYERS = {
    "foundation": [
        "hypermeta",
        "hypermeta.errors",
        "hypermeta.atomic",
        "hypermeta.paths",
        "hypermeta.registry",
        "hypermeta.progress",
        "hypermeta.stats",
        "hypermeta.config",
        "hypermeta.results",
        "hypermeta.data.registry",
        "hypermeta.tracking",
        "hypermeta.tracking_server",
        "hypermeta.stage_server",
    ],
    "data": ["hypermeta.data"],
    "networks": ["hypermeta.nn", "hypermeta.hyper", "hypermeta.continual"],
    "methods": ["hypermeta.methods"],
    "engines": ["hypermeta.engine"],
    "experiments": ["hypermeta.experiments"],
    "stages and tools": [
        "hypermeta.stages",
        "hypermeta.plots",
        "hypermeta.report",
        "hypermeta.viz",
        "hypermeta.sources",
        "hypermeta.dag",
        "hypermeta.cli",
        "hypermeta.fewshot_cli",
        "hypermeta.lm_cli",
        "hypermeta.paper_check",
    ],
}


def layer_of(module: str) -> int:
    placed = [
        (len(prefix), level)
        for level, prefixes in enumerate(LAYERS.values())
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert placed, f"{module} is in no layer of LAYERS (docs/ARCHITECTURE.md)"
    return max(placed)[1]


def test_every_module_imports_only_its_own_layer_and_those_below():
    names = list(LAYERS)
    upward = [
        f"{module} ({names[layer_of(module)]}) imports {other} ({names[layer_of(other)]})"
        for module, imported in import_graph().items()
        for other in imported
        if layer_of(other) > layer_of(module)
    ]
    assert upward == []
