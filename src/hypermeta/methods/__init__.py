"""One file per method, one registry. Each module registers a `MethodSpec`; importing
this package imports them all, so adding a method is adding a file."""

from __future__ import annotations

import sys

from hypermeta.methods.base import MethodSpec
from hypermeta.registry import Registry, import_modules

METHODS: Registry[MethodSpec] = Registry("method", lambda spec: spec.name)
# method name → the module whose import registered it: what its stages run (hypermeta.sources)
MODULES: dict[str, str] = {}


def register(spec: MethodSpec) -> MethodSpec:
    METHODS.register(spec)
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
    return METHODS.lookup(name, f"params.yaml: {where}: ")


import_modules(__name__, __path__, skip={"base"})
