"""MANN (Santoro, Bartunov, Botvinick, Wierstra & Lillicrap 2016), the memory-augmented
neural network for one-shot learning: an LSTM controller with an external memory read by
cosine similarity and written by least-recently-used access (LRU).

At step t the controller reads the image x_t (flattened pixels, downscaled to
`image_size`² as the paper's 20×20), the one-hot label y_{t-1} and its previous reads
r_{t-1}; from its state h_t each read head computes a key k_t = tanh(W_k h_t) and a write
gate σ(α_t), and (the paper's equations 5-8, n = the number of read heads):

    w^w_t = σ(α_t) w^r_{t-1} + (1 - σ(α_t)) w^lu_{t-1}   the last read slot, or the least used
    M_t   = M_{t-1} (least-used slot cleared first) + Σ_heads w^w_t ⊗ k_t
    w^r_t = softmax_i cos(k_t, M_t(i)),   r_t = Σ_i w^r_t(i) M_t(i)
    w^u_t = γ w^u_{t-1} + Σ_heads (w^r_t + w^w_t)
    w^lu_t(i) = 1 where w^u_t(i) is among the n smallest usages, else 0

and the logits at step t are a linear layer on [h_t, r_t]. The memory starts at 1e-6 in
every cell (a cosine needs a non-zero vector), usage and read weights at zero; ties of
usage go to the lowest slot. With `memory` off (methods/mann_lstm.py) the same controller
reads [x_t, y_{t-1}] alone and the logits come from h_t: the paper's LSTM baseline.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from hypermeta.config import StrictModel
from hypermeta.data.sequences import Sequences
from hypermeta.errors import HypermetaError
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.sequence_base import SequenceLearner, previous_labels


class ControllerConfig(StrictModel):
    """The LSTM controller and its inputs: MANN's and its LSTM baseline's."""

    n_way: int = Field(5, ge=2, description="classes of the label inputs and the output head")
    controller: int = Field(200, gt=0, description="LSTM controller units")
    image_size: int = Field(
        20, gt=0, description="images downscaled to image_size², then flattened (paper: 20)"
    )


class MANNConfig(ControllerConfig):
    slots: int = Field(128, gt=0, description="memory slots")
    slot_size: int = Field(40, gt=0, description="size of a memory slot (and of a key)")
    read_heads: int = Field(4, gt=0, description="read heads; as many least-used slots")
    gamma: float = Field(0.95, ge=0, le=1, description="usage decay γ")


class MemoryState(NamedTuple):
    memory: torch.Tensor  # (B, slots, size)
    usage: torch.Tensor  # (B, slots)
    read_weights: torch.Tensor  # (B, heads, slots), the last step's
    least_used: torch.Tensor  # (B, slots): 1 at the n least used slots


def least_used(usage: torch.Tensor, n: int) -> torch.Tensor:
    """(B, slots): 1 at the `n` smallest usages (ties: the lowest slots), else 0."""
    smallest = usage.argsort(dim=-1, stable=True)[:, :n]
    return torch.zeros_like(usage).scatter(1, smallest, 1.0)


def initial_state(batch: int, slots: int, size: int, heads: int, like: torch.Tensor) -> MemoryState:
    usage = like.new_zeros(batch, slots)
    return MemoryState(
        memory=like.new_full((batch, slots, size), 1e-6),
        usage=usage,
        read_weights=like.new_zeros(batch, heads, slots),
        least_used=least_used(usage, heads),
    )


def cosine_read_weights(keys: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """(B, heads, slots): softmax over slots of cos(key, slot), keys (B, heads, size)."""
    similarity = F.normalize(keys, dim=-1, eps=1e-8) @ F.normalize(memory, dim=-1, eps=1e-8).mT
    return similarity.softmax(-1)


def write_weights(gate: torch.Tensor, state: MemoryState) -> torch.Tensor:
    """(B, heads, slots): σ(α) w^r_{t-1} + (1 - σ(α)) w^lu_{t-1}; gate = σ(α) (B, heads)."""
    gate = gate.unsqueeze(-1)
    return gate * state.read_weights + (1 - gate) * state.least_used.unsqueeze(1)


def lru_step(
    state: MemoryState, keys: torch.Tensor, gate: torch.Tensor, gamma: float
) -> tuple[MemoryState, torch.Tensor, torch.Tensor]:
    """One step of LRU access: (the new state, reads (B, heads, size), write weights)."""
    writes = write_weights(gate, state)
    # The least used slot (from the last step's usage) is cleared before writing.
    cleared = least_used(state.usage, 1)
    memory = state.memory * (1 - cleared).unsqueeze(-1) + writes.mT @ keys
    reads = cosine_read_weights(keys, memory)
    usage = gamma * state.usage + reads.sum(1) + writes.sum(1)
    new = MemoryState(memory, usage, reads, least_used(usage, keys.shape[1]))
    return new, reads @ memory, writes


class MANN(SequenceLearner):
    """The controller of `config` with LRU memory, or without (`memory=False`)."""

    def __init__(self, config: ControllerConfig, image_shape: list[int], memory: bool) -> None:
        super().__init__()
        self.config, self.max_way, self.memory = config, config.n_way, memory
        pixels = image_shape[0] * config.image_size**2
        reads = config.read_heads * config.slot_size if memory else 0
        self.reads = reads
        self.cell = nn.LSTMCell(pixels + config.n_way + reads, config.controller)
        if memory:
            # Per head a key and a write gate's logit.
            self.heads = nn.Linear(config.controller, config.read_heads * (config.slot_size + 1))
        self.out = nn.Linear(config.controller + reads, config.n_way)

    def step_inputs(self, sequences: Sequences) -> torch.Tensor:
        """(B, T, pixels + n_way): each step's downscaled image and the previous label."""
        if sequences.n_way > self.max_way:
            raise HypermetaError(
                f"this model was built for at most {self.max_way} classes and cannot take "
                f"{sequences.n_way}; use at most {self.max_way} classes or a model trained "
                f"with model.n_way: {sequences.n_way}."
            )
        batch, steps = sequences.y.shape
        size = self.config.image_size
        images = sequences.x.flatten(0, 1)
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        pixels = images.reshape(batch, steps, -1)
        return torch.cat([pixels, previous_labels(sequences.y, self.max_way, pixels.dtype)], -1)

    def run(self, sequences: Sequences) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (B, T, N) and, with memory, each step's read and write weights (B, T,
        slots), averaged over the heads."""
        inputs = self.step_inputs(sequences)
        batch, steps = sequences.y.shape
        cfg = self.config
        h = c = inputs.new_zeros(batch, cfg.controller)
        reads = inputs.new_zeros(batch, self.reads)
        if self.memory:
            state = initial_state(batch, cfg.slots, cfg.slot_size, cfg.read_heads, inputs)
        logits, trace = [], {"read": [], "write": []}
        for t in range(steps):
            h, c = self.cell(torch.cat([inputs[:, t], reads], -1), (h, c))
            if self.memory:
                heads = self.heads(h).view(batch, cfg.read_heads, cfg.slot_size + 1)
                keys, gate = torch.tanh(heads[..., :-1]), torch.sigmoid(heads[..., -1])
                state, read, writes = lru_step(state, keys, gate, cfg.gamma)
                reads = read.flatten(1)
                trace["read"].append(state.read_weights.mean(1))
                trace["write"].append(writes.mean(1))
            logits.append(self.out(torch.cat([h, reads], -1)))
        traced = {name: torch.stack(rows, 1) for name, rows in trace.items() if rows}
        return torch.stack(logits, 1)[..., : sequences.n_way], traced

    def sequence_logits(self, sequences: Sequences) -> torch.Tensor:
        return self.run(sequences)[0]

    def sequence_trace(self, sequences: Sequences) -> dict[str, torch.Tensor] | None:
        return self.run(sequences)[1] if self.memory else None


def build(config: MANNConfig, data_info: dict[str, Any]) -> MANN:
    return MANN(config, data_info["image_shape"], memory=True)


def describe(config: MANNConfig) -> str:
    return (
        f"MANN: an LSTM controller of {config.controller} units with a {config.slots} × "
        f"{config.slot_size} memory, {config.read_heads} read heads, LRU writes (γ = "
        f"{config.gamma}); images downscaled to {config.image_size}×{config.image_size}."
    )


register(
    MethodSpec(
        name="mann",
        kind="fewshot",
        model_config=MANNConfig,
        build=build,
        summary="MANN: an LSTM controller with an LRU-written external memory over labelled "
        "sequences",
        describe=describe,
    )
)
