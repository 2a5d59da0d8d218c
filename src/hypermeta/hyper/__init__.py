"""Weight generators. Each maps a condition to a dict of tensors named and shaped like a
target module's parameters; `GeneratedModel` runs the target with them through
`torch.func.functional_call` (hyper/generated.py)."""

from hypermeta.hyper.generated import (
    GeneratedModel,
    WeightGenerator,
    effective_parameters,
    effective_size,
    parameter_cost,
    take_parameters,
    target_shapes,
)
from hypermeta.hyper.static import StaticHypernet

__all__ = [
    "GeneratedModel",
    "StaticHypernet",
    "WeightGenerator",
    "effective_parameters",
    "effective_size",
    "parameter_cost",
    "take_parameters",
    "target_shapes",
]
