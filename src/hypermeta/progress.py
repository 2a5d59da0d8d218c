"""Progress bars for long work: live on a terminal, a line every 30 s in logs."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A bar; set its postfix with `refresh=False`: a forced refresh prints a log line with
    the count as of the last regular refresh (0 for the first 30 s in a log)."""
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.2 if interactive else 30.0)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
