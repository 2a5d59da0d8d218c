"""The common interface every method file fills in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from torch import nn


@dataclass(frozen=True)
class MethodSpec:
    """A method: its engine `kind`, the schema of its `model:` section, and a builder.

    `build(model_config, data_info)` returns the module the engine trains; `data_info`
    is the prepared dataset's manifest (shapes, class count)."""

    name: str
    kind: str
    model_config: type[BaseModel]
    build: Callable[[Any, dict[str, Any]], nn.Module]
    summary: str
    # The weight plotted by `visualize` and costed in `evaluate` (e.g. a conv kernel).
    featured_weight: str | None = None
    # What the built module takes, before training, from the trained models of the
    # experiments its experiment `needs` ({name: trained module}); e.g. LEO's frozen encoder.
    start_from: Callable[[nn.Module, dict[str, nn.Module]], None] | None = None
    # A sentence the report prints with each of the method's experiments, from its model
    # section (the validated config): which variant ran, when that changes how to read
    # the numbers (Matching Networks with or without full context embeddings).
    describe: Callable[[Any], str] | None = None
