"""Meta Networks (Munkhdalai & Yu 2017, "Meta Networks", ICML), as the authors' Chainer
code for Omniglot builds them (MetaNetFull: every layer fast-parameterised and
layer-augmented):

- a base learner b, a layer-augmented conv net (nn/augmented.py: each layer a slow and a
  fast branch through their own ReLUs, summed) ending in an N-way output layer;
- a meta learner: the dynamic representation u, the same augmented net ending in a
  representation layer, and the fast-weight generators m (an MLP, for b) and d (an LSTM,
  for u), both coordinate-wise: each reads one weight's loss gradient, preprocessed as
  (log|g| / k, g·e^k), each clamped to [−1, 1].

For each task: the support set's loss gradients are the meta-information. d reads the
gradients of u's own classification loss on T chunks of the support set in turn and gives
u's task-level fast weights Q*; for each support example i, m maps the gradient of b's loss
on that example alone to the example-level fast weights W*_i, stored in a memory at the key
r'_i = u(Q, Q*, x'_i). A query x reads the memory by attention, softmax over the cosines
of u(Q, Q*, x) with the keys, and b classifies it with its slow weights and the read fast
weights Σᵢ aᵢ W*_i. The meta-objective is the queries' cross-entropy. As the authors' code,
first order: the gradients enter the generators as data (no derivative through them), so
u's classification head, which only shapes those gradients, is a fixed random projection
(the authors' key_fc2 is never updated either); u's slow weights learn through the keys.

Both fast-weight sets go through the generated-weights mechanism (hyper/generated.py): u is
a `GeneratedModel` conditioned on the chunk gradients; b one conditioned on the example
gradients and the attention, `per_example` (each query runs with its own fast weights).
One choice of ours: each generator's output is measured from its output at a zero
gradient (m(g) − m(0), and d likewise), so without meta-information there are no fast
weights and the learner is exactly its slow networks (tested); the authors' generators
give some constant fast weights there. Also ours, for a net without biases or batch norm
to train at all: He-initialised slow weights (nn/augmented.py), and b's slow output layer
starts at zero (zero slow logits: a random slow output, noise under labels re-drawn per
episode, was otherwise silenced by killing the ReLUs below it, and training stayed at
chance). The generators are not zero at first: a fast branch of exactly zero weights
passes no gradient through its ReLU (relu'(0) = 0) and would stay zero. No batch norm (as
the authors' net):
a query's answer depends on the support set and itself only, the `per_query` regime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from hypermeta.config import StrictModel
from hypermeta.data.episodes import Episodes
from hypermeta.errors import HypermetaError
from hypermeta.hyper.generated import GeneratedModel, WeightGenerator, take_parameters
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.fewshot_base import FewShotLearner
from hypermeta.nn.augmented import AugmentedNet, slow_name

Gradients = dict[str, torch.Tensor]  # fast-weight name → the loss gradient of its slow weight


class MetaNetConfig(StrictModel):
    """The `model:` section of Meta Networks."""

    n_way: int = Field(5, ge=2, description="classes of the base learner's output layer")
    width: int = Field(64, gt=0, description="filters per conv block (and representation size)")
    depth: int = Field(5, gt=0, description="conv blocks of b and u (the authors': 5)")
    meta_hidden: int = Field(20, gt=0, description="hidden units of m's MLP and d's LSTM")
    chunks: int = Field(
        5, gt=0, description="T: support chunks whose u-loss gradients d reads in turn"
    )
    log_sign_k: float = Field(7.0, gt=0, description="k of the (log|g|/k, g·e^k) preprocessing")
    attention_scale: float = Field(
        1.0, gt=0, description="multiplies the cosines before the memory's softmax (paper: 1)"
    )
    gradient_clip: float | None = Field(
        10.0, gt=0, description="clip the meta-gradient's norm (the authors': 10; None: not)"
    )


def log_and_sign(gradient: torch.Tensor, k: float) -> torch.Tensor:
    """(…, 2): the authors' preprocessing of a gradient, (log(|g| + ε) / k clamped below at
    −1, g·e^k clamped to [−1, 1]): inputs of order one whatever the gradient's scale."""
    eps = torch.finfo(gradient.dtype).eps
    magnitude = ((gradient.abs() + eps).log() / k).clamp_min(-1.0)
    return torch.stack([magnitude, (gradient * math.exp(k)).clamp(-1.0, 1.0)], -1)


def flat_by_kind(tensors: dict[str, torch.Tensor], leading: int) -> dict[bool, torch.Tensor]:
    """The tensors flattened and concatenated, conv kernels and linear weights apart (the
    authors give each kind its own generator); keyed by "is a conv kernel"."""
    kinds: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    for tensor in tensors.values():
        kinds[tensor.dim() - leading == 4].append(tensor.flatten(leading))
    return {kind: torch.cat(parts, -1) for kind, parts in kinds.items() if parts}


def unflatten_by_kind(
    flat: dict[bool, torch.Tensor], shapes: dict[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """Inverse of `flat_by_kind` for tensors of `shapes` (any leading dimensions kept)."""
    offsets = dict.fromkeys(flat, 0)
    out = {}
    for name, shape in shapes.items():
        kind, size = len(shape) == 4, math.prod(shape)
        part = flat[kind][..., offsets[kind] : offsets[kind] + size]
        out[name] = part.reshape(*part.shape[:-1], *shape)
        offsets[kind] += size
    return out


class CoordinateMLP(nn.Module):
    """m: one weight's preprocessed gradient → its fast weight, 2 → h → h → 1 with ReLUs,
    measured from the output at a zero gradient."""

    def __init__(self, hidden: int, k: float) -> None:
        super().__init__()
        self.k = k
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1, bias=False),  # a bias would cancel out
        )  # fmt: skip

    def forward(self, gradient: torch.Tensor) -> torch.Tensor:
        inputs = log_and_sign(torch.cat([gradient.flatten(), gradient.new_zeros(1)]), self.k)
        out = self.net(inputs).squeeze(-1)
        return (out[:-1] - out[-1]).view_as(gradient)


class CoordinateLSTM(nn.Module):
    """d: one weight's preprocessed gradients of the T chunks, read in turn by an LSTM cell
    (2 → h), its last output through a linear layer (h → 1): that weight's fast weight,
    measured from the output for T zero gradients."""

    def __init__(self, hidden: int, k: float) -> None:
        super().__init__()
        self.k = k
        self.cell = nn.LSTMCell(2, hidden)
        self.out = nn.Linear(hidden, 1, bias=False)  # a bias would cancel out

    def forward(self, gradients: list[torch.Tensor]) -> torch.Tensor:
        state = None
        for gradient in gradients:
            inputs = log_and_sign(torch.cat([gradient, gradient.new_zeros(1)]), self.k)
            state = self.cell(inputs, state)
        assert state is not None
        out = self.out(state[0]).squeeze(-1)
        return out[:-1] - out[-1]


class TaskFastWeights(WeightGenerator):
    """d as a generator: u's task-level fast weights Q* from the T chunk gradients
    (condition: a list of `Gradients`, one per chunk)."""

    def __init__(self, target_shapes: dict[str, torch.Size], hidden: int, k: float) -> None:
        super().__init__(target_shapes)
        self.conv = CoordinateLSTM(hidden, k)
        self.linear = CoordinateLSTM(hidden, k)

    def forward(self, condition: list[Gradients]) -> dict[str, torch.Tensor]:
        steps = [flat_by_kind(gradients, 0) for gradients in condition]
        flat = {
            kind: (self.conv if kind else self.linear)([step[kind] for step in steps])
            for kind in steps[0]
        }
        return unflatten_by_kind(flat, self.target_shapes)


@dataclass
class MemoryRead:
    """The condition of b's generator: the support examples' gradients (S, …) per weight,
    and each query's attention over the S memory slots, (Q, S)."""

    gradients: Gradients
    attention: torch.Tensor


class ExampleFastWeights(WeightGenerator):
    """m as a generator: one set of b's fast weights per support example (the memory),
    read for each query by its attention: {name: (Q, *shape)}."""

    def __init__(self, target_shapes: dict[str, torch.Size], hidden: int, k: float) -> None:
        super().__init__(target_shapes)
        self.conv = CoordinateMLP(hidden, k)
        self.linear = CoordinateMLP(hidden, k)

    def memory(self, gradients: Gradients) -> dict[str, torch.Tensor]:
        """{name: (S, *shape)}: W*_i = m(∇_i) for each support example i."""
        flat = flat_by_kind(gradients, 1)
        fast = {kind: (self.conv if kind else self.linear)(g) for kind, g in flat.items()}
        return unflatten_by_kind(fast, self.target_shapes)

    def forward(self, condition: MemoryRead) -> dict[str, torch.Tensor]:
        memory = self.memory(condition.gradients)
        return {
            name: (condition.attention @ slots.flatten(1)).view(-1, *slots.shape[1:])
            for name, slots in memory.items()
        }


def cosine_attention(queries: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """(Q, S): softmax over the keys of scale · cos(query, key)."""
    cosines = F.normalize(queries, dim=-1, eps=1e-6) @ F.normalize(keys, dim=-1, eps=1e-6).T
    return (scale * cosines).softmax(-1)


class MetaNetwork(FewShotLearner):
    """The base learner b and the meta learner (u, m, d), each task's fast weights from its
    support set's loss gradients (module docstring). An `n_way`-way output layer
    (`max_way`; episodes with fewer ways use its first columns)."""

    batchnorm_regimes = ("per_query",)  # no batch norm: each query with the support set alone

    def __init__(self, config: MetaNetConfig, channels: int, image_size: int) -> None:
        super().__init__()
        self.config = config
        self.max_way = config.n_way
        width, depth, hidden, k = config.width, config.depth, config.meta_hidden, config.log_sign_k
        base = AugmentedNet(channels, width, depth, image_size, [width, config.n_way], False)
        # Labels are drawn afresh for every episode, so a slow preference among the output
        # classes is noise: the slow output layer starts at zero (not killing the layers
        # below to silence it, which a net without biases or batch norm cannot undo).
        nn.init.zeros_(base.linear[-1].slow)
        self.base = GeneratedModel(
            base,
            ExampleFastWeights(take_parameters(base, base.fast_names), hidden, k),
            per_example=True,
        )
        representation = AugmentedNet(channels, width, depth, image_size, [width], True)
        self.representation = GeneratedModel(
            representation,
            TaskFastWeights(take_parameters(representation, representation.fast_names), hidden, k),
        )
        # u's classification head for its own loss, whose gradients are d's input: first
        # order, it gets no meta-gradient, so it is a fixed projection (nn.Linear's init).
        head = nn.Linear(width, config.n_way, bias=False).weight.detach()
        self.register_buffer("representation_head", head)

    # -- meta-information: loss gradients of the slow weights, fast branches off --------

    def slow_weights(self, model: GeneratedModel) -> dict[str, torch.Tensor]:
        """The slow weights of `model`'s target (detached: the gradients are data) and zero
        fast weights: with them the target computes its slow network exactly."""
        slow = {n: p.detach() for n, p in model.target.named_parameters()}
        like = next(iter(slow.values()))
        shapes = model.generator.target_shapes
        return slow | {n: like.new_zeros(shape) for n, shape in shapes.items()}

    def example_gradients(
        self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int
    ) -> Gradients:
        """{fast name: (S, *shape)}: for each support example, the gradient of b's loss on it
        alone with respect to the slow weight beside that fast weight. Each example runs
        with its own copy of the slow weights, so one backward pass of the summed losses
        gives every example's gradient (torch.func.grad costs ~1.3 s on its first call)."""
        weights = self.slow_weights(self.base)
        fast_names = list(self.base.generator.target_shapes)
        count = len(support_x)

        def one_example(slow: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base.target, weights | slow, (x[None],))[0]

        with torch.enable_grad():
            copies = {
                slow_name(n): weights[slow_name(n)].expand(count, *weights[n].shape).clone()
                for n in fast_names
            }
            for copy in copies.values():
                copy.requires_grad_()
            logits = vmap(one_example)(copies, support_x)[:, :n_way]
            loss = F.cross_entropy(logits, support_y, reduction="sum")
            grads = torch.autograd.grad(loss, list(copies.values()))
        return dict(zip(fast_names, grads, strict=True))

    def chunk_gradients(
        self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int
    ) -> list[Gradients]:
        """For each of the T chunks of the support set, the gradient of u's classification
        loss on that chunk with respect to u's slow weights (keyed by their fast names).
        One forward over the support set (its rows are independent: no batch norm), one
        backward per chunk."""
        weights = self.slow_weights(self.representation)
        fast_names = list(self.representation.generator.target_shapes)
        with torch.enable_grad():
            slow = [weights[slow_name(n)].requires_grad_() for n in fast_names]
            features = functional_call(self.representation.target, weights, (support_x,))
            logits = features @ self.representation_head[:n_way].T
            losses = F.cross_entropy(logits, support_y, reduction="none")
            chunks = losses.chunk(self.config.chunks)
            return [
                dict(
                    zip(
                        fast_names,
                        torch.autograd.grad(c.mean(), slow, retain_graph=True),
                        strict=True,
                    )
                )
                for c in chunks
            ]

    # -- one task ------------------------------------------------------------------------

    def task_logits(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, n_way: int
    ) -> torch.Tensor:
        """(Q, n_way) logits of one task's queries."""
        chunk_gradients = self.chunk_gradients(support_x, support_y, n_way)
        # keys r'_i and the queries' representations, with the task-level fast weights
        represented = self.representation(
            torch.cat([support_x, query_x]), condition=chunk_gradients
        )
        keys, queries = represented[: len(support_x)], represented[len(support_x) :]
        attention = cosine_attention(queries, keys, self.config.attention_scale)
        read = MemoryRead(self.example_gradients(support_x, support_y, n_way), attention)
        return self.base(query_x, condition=read)[:, :n_way]

    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        if episodes.n_way > self.max_way:
            raise HypermetaError(
                f"this model was built for at most {self.max_way} classes and cannot take "
                f"{episodes.n_way}; use at most {self.max_way} classes or a model trained "
                f"with model.n_way: {episodes.n_way}."
            )
        tasks = zip(episodes.support_x, episodes.support_y, episodes.query_x, strict=True)
        return torch.stack([self.task_logits(*task, episodes.n_way) for task in tasks])

    def generated_filters(self, episodes: Episodes) -> torch.Tensor:
        """(B, out, in, 3, 3): u's task-level fast kernel of its first conv block per episode."""
        first = self.representation.target.fast_names[0]
        tasks = zip(episodes.support_x, episodes.support_y, strict=True)
        return torch.stack(
            [
                self.representation.generator(self.chunk_gradients(x, y, episodes.n_way))[first]
                for x, y in tasks
            ]
        )

    def test_logits(self, episodes: Episodes) -> torch.Tensor:
        # the meta-information's gradients enable autograd for themselves alone
        with torch.no_grad():
            return self.query_logits(episodes)

    def before_update(self) -> None:
        if self.config.gradient_clip is not None:
            nn.utils.clip_grad_norm_(self.parameters(), self.config.gradient_clip)


def build(config: MetaNetConfig, data_info: dict[str, Any]) -> MetaNetwork:
    channels, height, _ = data_info["image_shape"]
    return MetaNetwork(config, channels, height)


register(
    MethodSpec(
        name="metanet",
        kind="fewshot",
        model_config=MetaNetConfig,
        build=build,
        summary="Meta Networks: fast weights from support-set loss gradients, example-level "
        "in a memory read by attention and task-level, on layer-augmented nets "
        "(Munkhdalai & Yu 2017)",
    )
)
