"""The registries of methods, engine kinds and plotters: name → item, filled by the
modules of one package (adding one is adding a file). A registry imports its package's
modules on first use, not when the package is imported: a module registering itself
imports the package, so the package importing its modules would be an import cycle."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from hypermeta.errors import HypermetaError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    def __init__(self, what: str, name_of: Callable[[T], str], package: str) -> None:
        self.what = what
        self.name_of = name_of
        self.package = package
        self._items: dict[str, T] = {}
        self._modules: dict[str, str] = {}
        self._loaded = False

    def register(self, item: T) -> T:
        name = self.name_of(item)
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._items[name] = item
        self._modules[name] = _module_being_imported()
        return item

    def _load(self) -> dict[str, T]:
        if not self._loaded:
            self._loaded = True  # first: the modules' own lookups must not load again
            for module in pkgutil.iter_modules(importlib.import_module(self.package).__path__):
                importlib.import_module(f"{self.package}.{module.name}")
        return self._items

    def __getitem__(self, name: str) -> T:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def lookup(self, name: str, where: str = "") -> T:
        """The item named `name`; an unknown name is one sentence listing the known ones."""
        if name not in self:
            raise HypermetaError(
                f"{where}unknown {self.what} {name!r}; known {self.what}s are {sorted(self)}."
            )
        return self[name]

    def module_of(self, name: str) -> str:
        """The module whose import registered `name`: what a stage using it runs
        (hypermeta.sources)."""
        self._load()
        return self._modules[name]


def _module_being_imported() -> str:
    """The module whose top-level code is registering, also through a helper in another
    module (reptile.py registers through gradient.learner.register_learner)."""
    frame = sys._getframe(2)
    while frame.f_back is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    return frame.f_globals["__name__"]
