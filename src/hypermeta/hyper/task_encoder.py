"""A few-shot task's support set, encoded for a hypernetwork, and the generators it
conditions: what the support-set hypernetworks share (methods/hypernet_fewshot.py,
hyperproto.py, hypermaml.py).

Permutation invariance is by construction. A class is the mean of its support
embeddings (`prototypes`), so shuffling the support set within or across classes, labels
with it, changes nothing. A class's code is one MLP of its own mean and a context pooled
symmetrically over all classes, so relabelling the classes permutes the class codes the
same way; the task code (their mean) does not move. Any number of ways and shots.

Pooling (`TaskEncoder`): `mean`, the context is the mean of the class means; `kernel`,
after HyperShot (Sendera et al. 2022), which feeds the support kernel matrix to its
hypernetwork: each class's context is its row of the cosine kernel between class means
applied to them (the kernel-weighted mean of the class means). HyperShot flattens the
kernel matrix in label order, which fixes the number of ways and ties the output to the
order; the row applied to the means keeps any number of ways and the invariance.

Generators (`TaskHypernet`, a `WeightGenerator`, run through `GeneratedModel`): weights
named `per_class` get one row per class from that class's code (a classification head
of any number of ways: the first dimension follows the classes, the rest is
`target_shapes`); the others come from the task code. `GeneratedHead` and
`ConditionedConv4` are the two targets the learners generate: a linear head and Conv-4's
last block.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hypermeta.hyper.generated import (
    GeneratedModel,
    WeightGenerator,
    take_parameters,
    target_shapes,
)
from hypermeta.nn.conv4 import Conv4
from hypermeta.nn.mainnet import mlp

Pooling = Literal["mean", "kernel"]


def prototypes(support: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Mean embedding per class, (..., N, D) from (..., S, D) embeddings and (..., S)
    labels; classes may have different numbers of shots."""
    onehot = F.one_hot(labels, n_way).to(support.dtype)  # (..., S, N)
    counts = onehot.sum(-2).clamp_min(1).unsqueeze(-1)
    return onehot.transpose(-1, -2) @ support / counts


def squared_distances(query: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(..., Q, D) queries and (..., N, D) centres → (..., Q, N) squared distances."""
    return (query.unsqueeze(-2) - centres.unsqueeze(-3)).pow(2).sum(-1)


@dataclass
class TaskCode:
    """A support set, encoded: `classes` (..., N, code) one per class, `task` (..., code)."""

    classes: torch.Tensor
    task: torch.Tensor

    def index(self, task: int) -> TaskCode:
        return TaskCode(self.classes[task], self.task[task])


class TaskEncoder(nn.Module):
    """Support embeddings (..., S, D) and labels → `TaskCode` (module docstring)."""

    def __init__(
        self, features: int, code: int, hidden: Iterable[int], pooling: Pooling = "mean"
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.phi = mlp(2 * features, list(hidden), code)

    def context(self, means: torch.Tensor) -> torch.Tensor:
        """What each class sees of the others, (..., N, D), symmetric in the classes."""
        if self.pooling == "mean":
            return means.mean(-2, keepdim=True).expand_as(means)
        unit = F.normalize(means, dim=-1)
        kernel = unit @ unit.transpose(-1, -2)  # (..., N, N) cosine similarities
        return kernel @ means / means.shape[-2]

    def forward(self, support: torch.Tensor, labels: torch.Tensor, n_way: int) -> TaskCode:
        means = prototypes(support, labels, n_way)
        classes = self.phi(torch.cat([means, self.context(means)], -1))
        return TaskCode(classes, classes.mean(-2))


def _key(name: str) -> str:
    return name.replace(".", "_")


class TaskHypernet(WeightGenerator):
    """`TaskCode` → weights: one linear output layer per generated name, from the class
    codes for names in `per_class` (rows (..., N, *shape)), else from the task code
    ((..., *shape)). Starts near He initialisation for multi-dimensional weights,
    `init_scale` times that (small for a residual on learned weights)."""

    def __init__(
        self,
        target_shapes: dict[str, torch.Size],
        code: int,
        per_class: Iterable[str] = (),
        init_scale: float = 1.0,
    ) -> None:
        super().__init__(target_shapes)
        self.per_class = set(per_class)
        self.out = nn.ModuleDict(
            {_key(n): nn.Linear(code, math.prod(s)) for n, s in self.target_shapes.items()}
        )
        for name, shape in self.target_shapes.items():
            layer = self.out[_key(name)]
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            nn.init.normal_(layer.weight, std=init_scale * math.sqrt(2 / fan_in / code))
            nn.init.zeros_(layer.bias)

    def shape(self, name: str, n_way: int) -> torch.Size:
        """The generated tensor's shape for one task of `n_way` classes."""
        shape = self.target_shapes[name]
        return torch.Size([n_way, *shape]) if name in self.per_class else shape

    def forward(self, condition: TaskCode) -> dict[str, torch.Tensor]:
        weights = {}
        for name, shape in self.target_shapes.items():
            code = condition.classes if name in self.per_class else condition.task
            flat = self.out[_key(name)](code)
            weights[name] = flat.reshape(*flat.shape[:-1], *shape)
        return weights


class GeneratedHead(nn.Module):
    """A linear classification head whose row per class (weight and bias) is generated
    from that class's code: any number of ways. `residual`: the rows are added to
    ProtoNet's head of the class means (weight 2·c_k, bias −‖c_k‖², the linear form of
    minus the squared distance up to a per-query constant), the learned base weights a
    head of varying ways can have."""

    def __init__(self, features: int, code: int, residual: bool = False) -> None:
        super().__init__()
        target = nn.Linear(features, 1)
        shapes = {name: shape[1:] for name, shape in target_shapes(target).items()}
        take_parameters(target, list(shapes))
        self.residual = residual
        generator = TaskHypernet(shapes, code, per_class=shapes, init_scale=0.1 if residual else 1)
        self.model = GeneratedModel(target, generator)

    def weights(
        self,
        classes: torch.Tensor,
        means: torch.Tensor,
        generator: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """{weight (N, D), bias (N,)} of one task from its class codes and class means;
        `generator` replaces some of the generator's own parameters by name (the inner
        loop of hypermaml adapts its output layer)."""
        condition = TaskCode(classes, classes.mean(-2))
        rows = functional_call(self.model.generator, generator or {}, (condition,))
        if self.residual:
            base = {"weight": 2 * means, "bias": -means.pow(2).sum(-1)}
            rows = {name: base[name] + delta for name, delta in rows.items()}
        return rows

    def forward(self, features: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """(Q, D) features → (Q, N) logits with one task's head `weights`."""
        return functional_call(self.model.target, weights, (features,))


class ConditionedConv4(nn.Module):
    """Conv-4 whose last block's convolution is generated per task from the support set:
    the first three blocks embed every image, a `TaskEncoder` reads the support set's
    (spatially averaged) features, a `TaskHypernet` generates the block's kernel and bias
    from the task code, and the block runs with them (`GeneratedModel`). `residual`: the
    block keeps its learned kernel and the generated one is added."""

    def __init__(
        self,
        channels: int,
        hidden: int,
        image_size: int,
        code: int,
        encoder_hidden: Iterable[int],
        pooling: Pooling,
        residual: bool,
    ) -> None:
        super().__init__()
        conv4 = Conv4(channels, hidden, image_size=image_size)
        self.embedding_size = conv4.embedding_size
        self.trunk = conv4.features[:3]
        block = conv4.features[3]
        names = ["0.weight", "0.bias"]  # the block's convolution (then batch norm, ReLU, pool)
        shapes = target_shapes(block, names) if residual else take_parameters(block, names)
        self.task_encoder = TaskEncoder(hidden, code, encoder_hidden, pooling)
        generator = TaskHypernet(shapes, code, init_scale=0.1 if residual else 1)
        self.block = GeneratedModel(block, generator, residual=residual)

    def code(self, support: torch.Tensor, labels: torch.Tensor, n_way: int) -> TaskCode:
        """One task's code from its support images' trunk features (S, C, H, W)."""
        return self.task_encoder(support.mean((-2, -1)), labels, n_way)

    def forward(self, images: torch.Tensor, support_size: int, labels: torch.Tensor, n_way: int):
        """One task's images, support first: (embeddings (S+Q, D), its code, the kernel)."""
        trunk = self.trunk(images)
        code = self.code(trunk[:support_size], labels, n_way)
        weights = self.block.weights(code)
        return functional_call(self.block.target, weights, (trunk,)).flatten(1), code, weights
