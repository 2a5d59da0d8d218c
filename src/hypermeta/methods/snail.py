"""SNAIL (Mishra, Rohaninejad, Chen & Abbeel 2018), the Simple Neural Attentive Learner, as
a few-shot learner: an episode is a sequence of Conv-4 embeddings, each support image's
concatenated with its one-hot label and the query's with a zero vector, the N·K support
steps first and the query last; causal temporal-convolution (TC) and attention blocks read
it, and a linear layer on the query step gives the N logits. The paper's Omniglot network:
Attention(64, 32) → TC(128) → Attention(256, 128) → TC(128) → Attention(512, 256) → linear.

Each query is its own sequence, the support steps followed by that query: it sees the
support set but neither its own label nor another query. With causal blocks the support
steps' outputs do not depend on the query, so every layer here runs on the support prefix
of a task once, (B, S, C), and on the task's queries as the last step of their own
sequences, (B, Q, C): each query step reads the prefix and itself only. That is the same
function as Q separate sequences of S + 1 steps, without computing the prefix Q times."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from hypermeta.config import StrictModel
from hypermeta.data.episodes import Episodes, seeded_generator
from hypermeta.errors import HypermetaError
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.fewshot_base import FewShotLearner, embedded_per_episode
from hypermeta.nn.conv4 import Conv4

# (prefix, query): a layer's input or output at the support steps (B, S, C) and at the
# query steps (B, Q, C), each query the step after the prefix in its own sequence.
Steps = tuple[torch.Tensor, torch.Tensor]


class SNAILConfig(StrictModel):
    n_way: int = Field(5, ge=2, description="classes of the label inputs and the output head")
    k_shot: int = Field(
        1, gt=0, description="shots the TC blocks are sized for: depth ⌈log₂(n_way·k_shot + 1)⌉"
    )
    hidden: int = Field(64, gt=0, description="filters per Conv-4 block (the embedding size)")
    width: float = Field(
        1.0, gt=0, description="scales every attention key/value size and TC filter count"
    )


def tc_depth(length: int) -> int:
    """Dense blocks of a TC block over `length` steps: ⌈log₂ length⌉, so that the dilations
    1, 2, …, 2^(depth-1) reach back over the whole sequence (base 2, not e)."""
    return math.ceil(math.log2(length))


class CausalConv(nn.Module):
    """Kernel-2 causal conv1d: step t reads steps t − dilation (zero before the start) and t."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(in_channels, out_channels, 2, dilation=dilation)

    def forward(self, steps: Steps) -> Steps:
        prefix, query = steps
        padded = F.pad(prefix.transpose(1, 2), (self.dilation, 0))
        out_prefix = self.conv(padded).transpose(1, 2)
        earlier, current = self.conv.weight.unbind(-1)
        out_query = F.linear(query, current, self.conv.bias)
        back = prefix.shape[1] - self.dilation  # the query step's earlier tap
        if back >= 0:
            out_query = out_query + F.linear(prefix[:, back], earlier).unsqueeze(1)
        return out_prefix, out_query


class DenseBlock(nn.Module):
    """tanh(conv_f(x)) ⊙ σ(conv_g(x)) of two causal convolutions, concatenated to x."""

    def __init__(self, in_channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.conv = CausalConv(in_channels, 2 * filters, dilation)  # conv_f and conv_g at once

    def forward(self, steps: Steps) -> Steps:
        def gated(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            f, g = out.chunk(2, dim=-1)
            return torch.cat([x, torch.tanh(f) * torch.sigmoid(g)], -1)

        outs = self.conv(steps)
        return gated(steps[0], outs[0]), gated(steps[1], outs[1])


class TCBlock(nn.Module):
    """Dense blocks with dilations 1, 2, 4, …, ⌈log₂ length⌉ of them; every step keeps its
    place (output length = input length), each adding `filters` channels."""

    def __init__(self, in_channels: int, length: int, filters: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(DenseBlock(in_channels + i * filters, filters, 2**i) for i in range(tc_depth(length)))
        )
        self.out_channels = in_channels + len(self.blocks) * filters

    def forward(self, steps: Steps) -> Steps:
        return self.blocks(steps)


class AttentionBlock(nn.Module):
    """Causal softmax(QKᵀ/√k)V, concatenated to the input: step t attends to steps ≤ t; a
    query step to the support prefix and itself."""

    def __init__(self, in_channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.key_size, self.value_size = key_size, value_size
        self.project = nn.Linear(in_channels, 2 * key_size + value_size)  # queries, keys, values
        self.out_channels = in_channels + value_size

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.project(x).split([self.key_size, self.key_size, self.value_size], -1)

    def forward(self, steps: Steps) -> Steps:
        return self.attend(steps)[0]

    def attend(self, steps: Steps) -> tuple[Steps, torch.Tensor]:
        """The block's output and its attention weights over the episode's steps,
        (B, S + Q, S + Q), the support steps first: row i is what step i reads from step
        j, zero for j > i and between queries (`episode_weights`)."""
        prefix, query = steps
        scale = 1 / math.sqrt(self.key_size)
        q_p, k_p, v_p = self.split(prefix)
        length = prefix.shape[1]
        future = torch.ones(length, length, dtype=torch.bool, device=prefix.device).triu(1)
        scores = (q_p @ k_p.transpose(1, 2) * scale).masked_fill(future, -math.inf)
        prefix_weights = scores.softmax(-1)
        read_prefix = prefix_weights @ v_p
        q_q, k_q, v_q = self.split(query)
        to_prefix = q_q @ k_p.transpose(1, 2) * scale  # (B, Q, S)
        to_itself = (q_q * k_q).sum(-1, keepdim=True) * scale  # never another query
        weights = torch.cat([to_prefix, to_itself], -1).softmax(-1)
        read_query = weights[..., :-1] @ v_p + weights[..., -1:] * v_q
        out = torch.cat([prefix, read_prefix], -1), torch.cat([query, read_query], -1)
        return out, episode_weights(prefix_weights, weights)


def episode_weights(prefix_weights: torch.Tensor, query_weights: torch.Tensor) -> torch.Tensor:
    """(B, S + Q, S + Q) attention weights of an episode from the support steps' own
    (B, S, S) and the queries' (B, Q, S + 1), over the support steps then the query
    itself: each query row holds its weights on the support columns and its own."""
    batch, support = prefix_weights.shape[:2]
    total = support + query_weights.shape[1]
    full = prefix_weights.new_zeros(batch, total, total)
    full[:, :support, :support] = prefix_weights
    full[:, support:, :support] = query_weights[..., :-1]
    full[:, support:, support:] = torch.diag_embed(query_weights[..., -1])
    return full


class SNAIL(FewShotLearner):
    """Conv-4 embeddings with labels, through the paper's Omniglot blocks to an
    `n_way`-way head (`max_way`; episodes with fewer ways use its first columns at
    meta-test); training shuffles each task's support steps and draws its classes' label
    slots among the head's columns (both seeded by the meta-iteration). Batch
    norm as ProtoNet's: per episode in training, transductive or running statistics at
    meta-test, where the encoder embeds each test image once (`image_encoder`)."""

    def __init__(self, encoder: Conv4, n_way: int, k_shot: int, width: float = 1.0) -> None:
        super().__init__()
        self.max_way = n_way
        # Channels-last, as ProtoNet's encoder (methods/protonet.py): faster on a CPU.
        self.encoder = encoder.to(memory_format=torch.channels_last)
        length = n_way * k_shot + 1

        def size(channels: int) -> int:
            return max(1, round(width * channels))

        self.order: torch.Generator | None = None  # shuffles the support steps in training
        channels = encoder.embedding_size + n_way
        blocks: list[AttentionBlock | TCBlock] = []
        for key, value, filters in ((64, 32, 128), (256, 128, 128), (512, 256, None)):
            blocks.append(AttentionBlock(channels, size(key), size(value)))
            channels = blocks[-1].out_channels
            if filters is not None:
                blocks.append(TCBlock(channels, length, size(filters)))
                channels = blocks[-1].out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, n_way)

    def on_iteration(self, iteration: int, total: int) -> None:
        # Seeded by the meta-iteration, as LEO's noise: a resumed run repeats its orders.
        self.order = seeded_generator("snail", iteration)

    def sequence(self, steps: Steps) -> Steps:
        """The blocks' outputs at every step (before the head)."""
        return self.blocks(steps)

    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        return self.feature_logits(embedded_per_episode(self.encoder, episodes))

    def feature_logits(self, episodes: Episodes) -> torch.Tensor:
        slots = self.label_slots(episodes)
        _, out = self.sequence(self.inputs(episodes, slots))
        logits = self.head(out)
        return logits.gather(-1, slots.unsqueeze(1).expand(-1, logits.shape[1], -1))

    def label_slots(self, episodes: Episodes) -> torch.Tensor:
        """(B, N): the label input and head column of each of an episode's classes. At
        meta-test the first N; in training N of the head's `max_way` drawn afresh per
        episode, so every column learns, and a model trained on 5-way episodes reads
        and answers 20 labels (the same mechanism, more columns)."""
        if episodes.n_way > self.max_way:
            raise HypermetaError(
                f"this model was built for at most {self.max_way} classes and cannot take "
                f"{episodes.n_way}; use at most {self.max_way} classes or a model trained "
                f"with model.n_way: {episodes.n_way}."
            )
        tasks = episodes.support_y.shape[0]
        if not self.training:
            return torch.arange(episodes.n_way, device=episodes.support_y.device).expand(tasks, -1)
        draw = torch.rand(tasks, self.max_way, generator=self.order or torch.Generator())
        return draw.argsort(1)[:, : episodes.n_way].to(episodes.support_y.device)

    def attention_maps(self, episodes: Episodes) -> list[torch.Tensor]:
        episodes = embedded_per_episode(self.encoder, episodes)
        steps = self.inputs(episodes, self.label_slots(episodes))
        maps = []
        for block in self.blocks:
            if isinstance(block, AttentionBlock):
                steps, weights = block.attend(steps)
                maps.append(weights)
            else:
                steps = block(steps)
        return maps

    def inputs(self, episodes: Episodes, slots: torch.Tensor) -> Steps:
        """The first block's input from episodes of features: support steps (shuffled in
        training) with their classes' one-hot label slots, queries with a zero label."""
        labels = F.one_hot(slots.gather(1, episodes.support_y), self.max_way)
        labels = labels.to(episodes.support_x.dtype)
        prefix = torch.cat([episodes.support_x, labels], -1)
        if self.training:
            # Episodes list the support set class by class: in a fixed order a sequence
            # model could read a step's class off its position instead of its label (a
            # 1-shot model then fails on 5-shot sequences), so training shuffles it.
            draw = torch.rand(prefix.shape[:2], generator=self.order or torch.Generator())
            order = draw.argsort(1).to(prefix.device)
            prefix = prefix.gather(1, order.unsqueeze(-1).expand_as(prefix))
        blank = episodes.query_x.new_zeros(*episodes.query_x.shape[:2], self.max_way)
        query = torch.cat([episodes.query_x, blank], -1)  # the query's own label: unseen
        return prefix, query

    def test_logits(self, episodes: Episodes) -> torch.Tensor:
        with torch.no_grad():
            return self.query_logits(episodes)

    def image_encoder(self) -> nn.Module | None:
        # With running batch-norm statistics an embedding depends on its image alone.
        return None if any(m.training for m in self.encoder.modules()) else self.encoder


def build(config: SNAILConfig, data_info: dict[str, Any]) -> SNAIL:
    channels, height, _ = data_info["image_shape"]
    encoder = Conv4(channels, config.hidden, image_size=height)
    return SNAIL(encoder, config.n_way, config.k_shot, config.width)


register(
    MethodSpec(
        name="snail",
        kind="fewshot",
        model_config=SNAILConfig,
        build=build,
        summary="SNAIL: causal temporal convolutions and attention over the labelled episode",
    )
)
