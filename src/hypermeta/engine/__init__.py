"""One trainer/evaluator per engine kind; methods declare which kind they are.

Each module here but the `HELPERS` registers an `Engine`; importing the package imports
them all."""

from __future__ import annotations

from hypermeta.engine.base import Engine, StageContext
from hypermeta.registry import Registry, import_modules

ENGINES: Registry[Engine] = Registry("engine kind", lambda engine: engine.kind)
register = ENGINES.register


def get_engine(kind: str) -> Engine:
    return ENGINES.lookup(kind)


# What the engine modules share; every other module here registers an engine kind.
HELPERS = {"base", "checkpoint", "device", "loop", "schedule"}
HELPERS |= {"continual_accuracy", "continual_training", "text_generation", "text_scoring"}
import_modules(__name__, __path__, skip=HELPERS)

__all__ = ["ENGINES", "Engine", "StageContext", "get_engine", "register"]
