"""One trainer/evaluator per engine kind; methods declare which kind they are.

Each engine module here registers an `Engine`; the registry imports them all on first use."""

from __future__ import annotations

from hypermeta.engine.base import Engine, StageContext
from hypermeta.registry import Registry

ENGINES: Registry[Engine] = Registry("engine kind", lambda engine: engine.kind, __name__)
register = ENGINES.register


def get_engine(kind: str) -> Engine:
    return ENGINES.lookup(kind)


__all__ = ["ENGINES", "Engine", "StageContext", "get_engine", "register"]
