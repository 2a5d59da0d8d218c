"""One file per method, one registry. Each module registers a `MethodSpec`; the registry
imports them all on first use, so adding a method is adding a file."""

from __future__ import annotations

from hypermeta.methods.base import MethodSpec
from hypermeta.registry import Registry

METHODS: Registry[MethodSpec] = Registry("method", lambda spec: spec.name, __name__)
register = METHODS.register


def get_method(name: str, where: str = "method") -> MethodSpec:
    return METHODS.lookup(name, f"params.yaml: {where}: ")
