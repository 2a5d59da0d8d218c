"""The registries of methods, engine kinds and plotters: name → item, filled by the
modules of one package as the package imports them all (adding one is adding a file)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from hypermeta.errors import HypermetaError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    def __init__(self, what: str, name_of: Callable[[T], str]) -> None:
        super().__init__()
        self.what = what
        self.name_of = name_of

    def register(self, item: T) -> T:
        name = self.name_of(item)
        if name in self:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self[name] = item
        return item

    def lookup(self, name: str, where: str = "") -> T:
        """The item named `name`; an unknown name is one sentence listing the known ones."""
        if name not in self:
            raise HypermetaError(
                f"{where}unknown {self.what} {name!r}; known {self.what}s are {sorted(self)}."
            )
        return self[name]


def import_modules(package: str, path: Iterable[str], skip: set[str]) -> None:
    """Import every module of `package` (its `__path__`) but those named in `skip`."""
    for module in pkgutil.iter_modules(path):
        if module.name not in skip:
            importlib.import_module(f"{package}.{module.name}")
