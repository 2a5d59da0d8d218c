"""Relation Network (Sung et al. 2018): an encoder maps each image to a feature map; a
class's feature map is the sum of its support examples' (K > 1); the relation module
scores each (class, query) pair from their maps concatenated in depth, a sigmoid in
[0, 1], trained by mean squared error against the one-hot targets.

The encoder is Sung's: four blocks of 3×3 conv (64 filters), batch norm, ReLU, with 2×2
max-pooling in the first two only (unpadded convs there, as in Sung's code: 28×28 →
64×5×5). The relation module: two such blocks with pooling, then FC-8 with ReLU and
FC-1 with a sigmoid. Initialisation and the gradient-norm clipping (0.5, encoder and
relation module apart) follow Sung's Omniglot code (floodsung/LearningToCompare_FSL);
its batch norm is never switched to evaluation mode there, so its numbers are
transductive at meta-test."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hypermeta.config import StrictModel
from hypermeta.data.episodes import Episodes
from hypermeta.errors import HypermetaError
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.metric_base import MetricLearner


class RelationConfig(StrictModel):
    hidden: int = Field(64, gt=0, description="filters per conv block (encoder and relation)")
    relation_units: int = Field(8, gt=0, description="units of the relation module's FC layer")
    clip_grad_norm: float | None = Field(
        0.5, gt=0, description="max gradient norm, encoder and relation module apart; null: none"
    )


def block(in_channels: int, out_channels: int, padding: int, pool: bool) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, 3, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


def sung_encoder(in_channels: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        block(in_channels, hidden, padding=0, pool=True),
        block(hidden, hidden, padding=0, pool=True),
        block(hidden, hidden, padding=1, pool=False),
        block(hidden, hidden, padding=1, pool=False),
    )


class RelationModule(nn.Module):
    """(class map, query map) pairs → relation scores in [0, 1]."""

    def __init__(self, hidden: int, side: int, units: int) -> None:
        super().__init__()
        self.first = block(2 * hidden, hidden, padding=1, pool=True)
        self.second = block(hidden, hidden, padding=1, pool=True)
        self.fc = nn.Linear(hidden * (side // 4) ** 2, units)
        self.out = nn.Linear(units, 1)

    def forward(self, classes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) class maps and (Q, C, h, w) query maps → (Q, N) scores of every
        pair, as the module on each pair's depth concatenation [class; query] gives. The
        first convolution is linear in that concatenation, so it runs once per class and
        once per query and the pairs add the two: (N + Q) convolutions, not N·Q."""
        conv = self.first[0]
        channels = classes.shape[1]
        by_class = F.conv2d(classes, conv.weight[:, :channels], conv.bias, padding=1)
        by_query = F.conv2d(queries, conv.weight[:, channels:], padding=1)
        pairs = (by_query.unsqueeze(1) + by_class.unsqueeze(0)).flatten(0, 1)
        x = self.second(self.first[1:](pairs)).flatten(1)
        scores = torch.sigmoid(self.out(F.relu(self.fc(x))))
        return scores.view(len(queries), len(classes))


def sung_init(module: nn.Module) -> None:
    """Sung's weights_init: conv N(0, 2 / (k² · out)), zero bias; batch norm (1, 0);
    linear N(0, 0.01²) with bias one."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.01)
        nn.init.ones_(module.bias)


class RelationNetwork(MetricLearner):
    def __init__(
        self, encoder: nn.Module, relation: RelationModule, clip_grad_norm: float | None
    ) -> None:
        super().__init__(encoder)
        self.relation = relation
        self.clip_grad_norm = clip_grad_norm

    def feature_logits(self, episodes: Episodes) -> torch.Tensor:
        """(B, N·Q, N) relation scores; each episode's pairs in one batch (batch norm)."""
        scores = []
        for support, labels, queries in zip(
            episodes.support_x, episodes.support_y, episodes.query_x, strict=True
        ):
            onehot = F.one_hot(labels, episodes.n_way).to(support.dtype)  # (S, N)
            classes = torch.einsum("sn,schw->nchw", onehot, support)  # sum over each class
            scores.append(self.relation(classes, queries))
        return torch.stack(scores)

    def loss(self, episodes: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.query_logits(episodes)
        targets = F.one_hot(episodes.query_y, episodes.n_way).to(scores.dtype)
        return F.mse_loss(scores, targets), scores

    def before_update(self) -> None:
        if self.clip_grad_norm is not None:
            for part in (self.encoder, self.relation):
                nn.utils.clip_grad_norm_(part.parameters(), self.clip_grad_norm)


def build(config: RelationConfig, data_info: dict[str, Any]) -> RelationNetwork:
    channels, height, _ = data_info["image_shape"]
    side = ((height - 2) // 2 - 2) // 2  # after the encoder's two unpadded, pooled blocks
    if side < 4:
        raise HypermetaError(
            f"the Relation Network needs images of at least 22×22 (its encoder and relation "
            f"module pool four times); these are {height}×{height}; resize them."
        )
    learner = RelationNetwork(
        sung_encoder(channels, config.hidden),
        RelationModule(config.hidden, side, config.relation_units),
        config.clip_grad_norm,
    )
    learner.apply(sung_init)
    return learner


register(
    MethodSpec(
        name="relation",
        kind="fewshot",
        model_config=RelationConfig,
        build=build,
        summary="Relation Network: a learned relation module scores (class, query) pairs",
    )
)
