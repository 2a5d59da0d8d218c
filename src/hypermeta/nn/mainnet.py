"""The main (target) network of the continual-learning experiments: a plain ReLU MLP
(also the body of the chunked hypernetwork, which may use ELU as the authors' Permuted runs).

Kept as an ordinary `nn.Sequential` so a hypernetwork can take all of its parameters
and run it through `functional_call`, and a baseline can train it directly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

Activation = Literal["relu", "elu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU}


def mlp(
    in_features: int, hidden: Sequence[int], out_features: int, activation: Activation = "relu"
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), ACTIVATIONS[activation]()]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)
