"""One trainer/evaluator per engine kind; methods declare which kind they are.

Each module here registers an `Engine`; importing the package imports them all."""

from __future__ import annotations

from hypermeta.engine.base import Engine, StageContext
from hypermeta.registry import Registry, import_modules

ENGINES: Registry[Engine] = Registry("engine kind", lambda engine: engine.kind)
register = ENGINES.register


def get_engine(kind: str) -> Engine:
    return ENGINES.lookup(kind)


import_modules(__name__, __path__, skip={"base", "checkpoint", "device", "loop", "schedule"})

__all__ = ["ENGINES", "Engine", "StageContext", "get_engine", "register"]
