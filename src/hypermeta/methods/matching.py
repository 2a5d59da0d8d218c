"""Matching Networks (Vinyals et al. 2016): a query's prediction is the attention-weighted
sum of the support set's one-hot labels, the attention a softmax over the cosine
similarities of the query's embedding with each support embedding; the loss is the
negative log-likelihood of that prediction. Conv-4 embeds the images.

Full context embeddings (`fce`, off by default, as in the paper's Omniglot results)
embed each support example in the context of the whole support set (a bidirectional
LSTM over it, plus a skip connection) and each query by an attention LSTM that reads
the support set for `fce_steps` processing steps."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hypermeta.config import StrictModel
from hypermeta.data.episodes import Episodes
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.metric_base import MetricLearner
from hypermeta.nn.conv4 import Conv4


class MatchingConfig(StrictModel):
    hidden: int = Field(64, gt=0, description="filters per Conv-4 block")
    fce: bool = Field(False, description="full context embeddings (LSTMs over the support set)")
    fce_steps: int = Field(
        2, gt=0, description="processing steps K of the queries' attention LSTM (fce)"
    )
    cosine_scale: float = Field(
        1.0,
        gt=0,
        description="multiplies the cosines before the softmax; 1 is the paper's attention, "
        "whose logits lie in [0, 1] for ReLU embeddings and so learn slowly",
    )


def canonical_order(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, S) indices that put each support set class by class, and within a class by the
    mean of each feature vector: an order that depends on the set's contents alone, so
    the LSTM that reads the set in it makes the embeddings permutation-equivariant."""
    by_content = features.mean(-1).argsort(-1)
    by_label = labels.gather(-1, by_content).argsort(dim=-1, stable=True)
    return by_content.gather(-1, by_label)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class FullContextEmbedding(nn.Module):
    """Vinyals et al.'s appendix: g, a bidirectional LSTM over the support embeddings
    with a skip connection; f, an LSTM whose state reads the support set by attention
    for K steps. The paper concatenates the state with the readout, which leaves the
    state's size undefined after the skip connection; here the readout is added to the
    state, as common implementations do, keeping every embedding the encoder's size."""

    def __init__(self, size: int, steps: int) -> None:
        super().__init__()
        self.support_lstm = nn.LSTM(size, size, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(size, size)
        self.steps = steps

    def support(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, S, D) support embeddings in the context of their set, in their order."""
        order = canonical_order(features, labels)
        ordered = _gather_rows(features, order)
        forward, backward = self.support_lstm(ordered)[0].chunk(2, dim=-1)
        return _gather_rows(ordered + forward + backward, order.argsort(-1))

    def queries(self, features: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """(B, Q, D) query embeddings after K steps of attention over `support` (B, S, D)."""
        flat = features.flatten(0, 1)
        state, cell = features, torch.zeros_like(flat)
        for _ in range(self.steps):
            readout = (state @ support.transpose(1, 2)).softmax(-1) @ support
            hidden, cell = self.query_cell(flat, ((state + readout).flatten(0, 1), cell))
            state = hidden.view_as(features) + features
        return state


class MatchingNetwork(MetricLearner):
    def __init__(
        self,
        encoder: nn.Module,
        fce: FullContextEmbedding | None = None,
        cosine_scale: float = 1.0,
    ) -> None:
        super().__init__(encoder)
        self.fce = fce
        self.cosine_scale = cosine_scale

    def attention(self, episodes: Episodes) -> torch.Tensor:
        """(B, N·Q, S) attention of each query over the support set, from features."""
        support, query = episodes.support_x, episodes.query_x
        if self.fce is not None:
            support = self.fce.support(support, episodes.support_y)
            query = self.fce.queries(query, support)
        cosine = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)
        return (self.cosine_scale * cosine).softmax(-1)

    def feature_logits(self, episodes: Episodes) -> torch.Tensor:
        """Log-probabilities of the attention-weighted labels: the default cross-entropy
        of these is their negative log-likelihood, as they already sum to one."""
        labels = F.one_hot(episodes.support_y, episodes.n_way).to(episodes.support_x.dtype)
        return (self.attention(episodes) @ labels).log()


def build(config: MatchingConfig, data_info: dict[str, Any]) -> MatchingNetwork:
    channels, height, _ = data_info["image_shape"]
    encoder = Conv4(channels, config.hidden, image_size=height)
    fce = FullContextEmbedding(encoder.embedding_size, config.fce_steps) if config.fce else None
    return MatchingNetwork(encoder, fce, config.cosine_scale)


def describe(config: MatchingConfig) -> str:
    if config.fce:
        return (
            "Embeddings: full context (a bidirectional LSTM over the support set, an "
            f"attention LSTM of {config.fce_steps} steps for the queries)."
        )
    return "Embeddings: Conv-4 alone, no full context embeddings (as the paper on Omniglot)."


register(
    MethodSpec(
        name="matching",
        kind="fewshot",
        model_config=MatchingConfig,
        build=build,
        summary="Matching Networks on Conv-4: cosine attention over the support set",
        describe=describe,
    )
)
