"""Prototypical Networks (Snell, Swersky & Zemel 2017): a class is the mean embedding of
its support examples; a query's logits are negative squared Euclidean distances to the
prototypes. No adaptation at test, so it is the reference that checks the data pipeline."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from hypermeta.config import StrictModel
from hypermeta.data.episodes import Episodes
from hypermeta.hyper.task_encoder import prototypes, squared_distances
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.metric_base import MetricLearner
from hypermeta.nn.conv4 import Conv4


class ProtoNetConfig(StrictModel):
    hidden: int = Field(64, gt=0, description="filters per Conv-4 block")


class PrototypicalNetwork(MetricLearner):
    def feature_logits(self, episodes: Episodes) -> torch.Tensor:
        centres = prototypes(episodes.support_x, episodes.support_y, episodes.n_way)
        return -squared_distances(episodes.query_x, centres)


def build(config: ProtoNetConfig, data_info: dict[str, Any]) -> PrototypicalNetwork:
    channels, height, _ = data_info["image_shape"]
    return PrototypicalNetwork(Conv4(channels, config.hidden, image_size=height))


register(
    MethodSpec(
        name="protonet",
        kind="fewshot",
        model_config=ProtoNetConfig,
        build=build,
        summary="Prototypical Networks on Conv-4: nearest class-mean embedding",
    )
)
