"""One file per method, one registry. Each module registers a `MethodSpec`; importing
this package imports them all, so adding a method is adding a file."""

from __future__ import annotations

import importlib
import pkgutil
import sys

from hypermeta.errors import HypermetaError
from hypermeta.methods.base import MethodSpec

METHODS: dict[str, MethodSpec] = {}
# method name → the module whose import registered it: what its stages run (hypermeta.sources)
MODULES: dict[str, str] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} registered twice")
    METHODS[spec.name] = spec
    MODULES[spec.name] = _module_being_imported()
    return spec


def _module_being_imported() -> str:
    """The module whose top-level code called `register`, also through a helper in
    another module (reptile.py registers through maml.register_learner)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    return frame.f_globals["__name__"]


def get_method(name: str, where: str = "method") -> MethodSpec:
    if name not in METHODS:
        raise HypermetaError(
            f"params.yaml: {where}: unknown method {name!r}; known methods are {sorted(METHODS)}."
        )
    return METHODS[name]


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
