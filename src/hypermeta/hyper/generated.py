"""The one mechanism for generated weights (docs/ARCHITECTURE.md, "Generated weights").

A generator (`WeightGenerator`) maps a condition to `{parameter name: tensor}` for a
target module, each tensor shaped as the generator's `target_shapes` says. The
condition is whatever the method conditions on: nothing (a static hypernetwork), a task
id (HNET's learned task embeddings live in the generator), or a support-set encoding
(hyper/task_encoder.py, the few-shot hypernetworks; LEO's latent codes likewise).
`GeneratedModel` runs the target with the generated tensors through `functional_call`,
so every generator, conditioned or not, plugs into the same module. The target stays an
ordinary module: the parameters a generator replaces are removed from it
(`take_parameters`) so they are neither trained nor counted twice, unless they are the
learned base the generated tensors are added to (`residual`).

HyperLSTM (hyper/hyperlstm.py) is the one deliberate exception: its weights are
modulated at every time step inside the cell, not generated once as a dict.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap


def target_shapes(module: nn.Module, names: Iterable[str] | None = None) -> dict[str, torch.Size]:
    """Shapes of `module`'s parameters (all, or the named ones), in definition order."""
    params = dict(module.named_parameters())
    selected = params if names is None else {n: params[n] for n in names}
    return {name: p.shape for name, p in selected.items()}


def take_parameters(module: nn.Module, names: Iterable[str]) -> dict[str, torch.Size]:
    """Remove the named parameters from `module`; they must then be supplied at call time.

    Returns their shapes, which is what a generator needs to know."""
    shapes = {}
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        shapes[name] = owner._parameters.pop(attr).shape
        setattr(owner, attr, None)  # functional_call swaps the generated tensor in here
    return shapes


class WeightGenerator(nn.Module, ABC):
    """condition → {name: tensor of shape target_shapes[name]} for every name it generates."""

    def __init__(self, target_shapes: dict[str, torch.Size]) -> None:
        super().__init__()
        self.target_shapes = dict(target_shapes)

    @abstractmethod
    def forward(self, condition: Any) -> dict[str, torch.Tensor]: ...


class GeneratedModel(nn.Module):
    """A target module whose parameters `generator.target_shapes` come from the generator.

    `model(*inputs, condition=c)` runs `target(*inputs)` with the weights `generator(c)`;
    a generator that takes no condition is called with None, so `model(x)` suffices.
    `residual`: the target keeps the generated names as learned base weights (they were
    not taken) and computes with base + generated. `per_example`: the generator gives one
    set of tensors per input row (a leading dimension on each), and row i of the inputs
    runs with set i (Meta Networks' fast weights, read from memory for each query)."""

    def __init__(
        self,
        target: nn.Module,
        generator: WeightGenerator,
        residual: bool = False,
        per_example: bool = False,
    ) -> None:
        super().__init__()
        self.target = target
        self.generator = generator
        self.residual = residual
        self.per_example = per_example

    def weights(self, condition: Any = None) -> dict[str, torch.Tensor]:
        """The tensors swapped into the target under `condition`."""
        generated = self.generator(condition)
        if not self.residual:
            return generated
        own = dict(self.target.named_parameters())
        return {name: own[name] + delta for name, delta in generated.items()}

    def forward(self, *inputs: torch.Tensor, condition: Any = None) -> torch.Tensor:
        weights = self.weights(condition)
        if not self.per_example:
            return functional_call(self.target, weights, inputs)

        def one_row(row_weights: dict[str, torch.Tensor], *row: torch.Tensor) -> torch.Tensor:
            batch = tuple(x.unsqueeze(0) for x in row)
            return functional_call(self.target, row_weights, batch).squeeze(0)

        return vmap(one_row)(weights, *inputs)


def effective_parameters(model: nn.Module, condition: Any = None) -> dict[str, torch.Tensor]:
    """The weights the model computes with (under `condition`, for a generated model):
    generated ones merged with its own."""
    if isinstance(model, GeneratedModel):
        own = {n: p.detach() for n, p in model.target.named_parameters()}
        generated = {n: w.detach() for n, w in model.weights(condition).items()}
        return own | generated
    return {n: p.detach() for n, p in model.named_parameters()}


def effective_size(model: nn.Module) -> int:
    """How many weights the model computes with, learned or generated (the size of
    `effective_parameters`, read from the shapes without generating anything)."""
    if isinstance(model, GeneratedModel):
        own = dict(model.target.named_parameters())
        generated = model.generator.target_shapes.items()
        return sum(p.numel() for p in own.values()) + sum(
            math.prod(s) for name, s in generated if name not in own
        )
    return sum(p.numel() for p in model.parameters())


def parameter_cost(model: nn.Module, name: str) -> int:
    """Trainable parameters spent on weight `name`: its size if learned directly, or the
    generator's whole parameter count if generated (plus its base, if residual)."""
    if isinstance(model, GeneratedModel):
        if name in model.generator.target_shapes:
            base = model.target.get_parameter(name).numel() if model.residual else 0
            return base + sum(p.numel() for p in model.generator.parameters())
        model = model.target
    return dict(model.named_parameters())[name].numel()
