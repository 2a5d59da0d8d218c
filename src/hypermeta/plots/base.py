"""The contract between the visualize stage (and the report) and an engine kind's plots.

visualize writes PNG files (and notes) into plots_dir and returns their paths;
compare   (optional) draws one group's experiments together for the report.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from hypermeta.engine.base import StageContext


class Plotter(ABC):
    kind: ClassVar[str]  # the engine kind it draws

    @abstractmethod
    def visualize(self, ctx: StageContext) -> list[Path]: ...

    def compare(self, contexts: list[StageContext], out_dir: Path, title: str) -> list[Path]:
        """Figures comparing the trained experiments of one `group` (report stage)."""
        return []
