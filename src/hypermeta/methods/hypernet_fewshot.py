"""Support-set hypernetwork classifier (issue 17; Ha et al.'s hypernetworks applied to a
task, as in HyperShot, Sendera et al. 2022): a Conv-4 embeds the support set, a
permutation-invariant task encoder (hyper/task_encoder.py: per-class pooling, or the
support kernel) gives each class a code, and a hypernetwork generates from it that
class's row of the classification head, so the head takes any number of ways. Queries
run through the generated head (and, with `generate_block`, through a last conv block
generated from the task code). No inner loop: one forward per episode.

`SupportSetHypernet` is the per-episode frame hyperproto.py shares: embed a task's images
(its support set first), classify its queries, and answer the figure hooks."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from hypermeta.config import StrictModel
from hypermeta.data.episodes import Episodes
from hypermeta.hyper.task_encoder import (
    ConditionedConv4,
    GeneratedHead,
    TaskEncoder,
    prototypes,
)
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.fewshot_base import FewShotLearner
from hypermeta.nn.conv4 import Conv4


class SupportEncoderConfig(StrictModel):
    """The `model:` fields hypernet_fewshot and hyperproto share."""

    hidden: int = Field(64, gt=0, description="filters per Conv-4 block")
    code: int = Field(64, gt=0, description="size of the class and task codes")
    encoder_hidden: list[int] = Field(
        [128], description="hidden layers of the task encoder's per-class MLP"
    )
    pooling: Literal["mean", "kernel"] = Field(
        "mean", description="task encoder context: mean of class means, or HyperShot's kernel"
    )
    residual: bool = Field(
        False, description="generated weights added to learned (head: ProtoNet's) base weights"
    )


class HypernetFewShotConfig(SupportEncoderConfig):
    generate_block: bool = Field(
        False, description="also generate Conv-4's last block from the task code"
    )


@dataclass
class TaskOutput:
    """One episode through the learner: query logits (Q, N), the task code, and the
    generated head rows (N, D) and conv kernel where it generates them."""

    logits: torch.Tensor
    code: torch.Tensor | None = None
    head: torch.Tensor | None = None
    filters: torch.Tensor | None = None


class SupportSetHypernet(FewShotLearner):
    """Episodes one at a time through `embedding` (a Conv-4, or a `ConditionedConv4`
    whose last block is generated), then `classify` on the embeddings. Batch norm as
    ProtoNet's: per episode in training, transductive or running statistics at
    meta-test, where a plain Conv-4 encodes each test image once (`image_encoder`)."""

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        # Channels-last, as ProtoNet's encoder (methods/protonet.py): faster on a CPU.
        self.embedding = embedding.to(memory_format=torch.channels_last)

    @abstractmethod
    def classify(
        self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, n_way: int
    ) -> TaskOutput:
        """One task from its support and query embeddings."""

    def task(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, n_way: int
    ) -> TaskOutput:
        images = torch.cat([support_x, query_x])
        if images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        shots = len(support_y)
        if not isinstance(self.embedding, ConditionedConv4):
            features = self.embedding(images)
            return self.classify(features[:shots], support_y, features[shots:], n_way)
        features, block_code, weights = self.embedding(images, shots, support_y, n_way)
        out = self.classify(features[:shots], support_y, features[shots:], n_way)
        code = block_code.task if out.code is None else out.code
        return TaskOutput(out.logits, code, out.head, weights["0.weight"])

    def tasks(self, episodes: Episodes) -> list[TaskOutput]:
        # One forward per episode: batch-norm statistics come from that episode alone.
        tasks = zip(episodes.support_x, episodes.support_y, episodes.query_x, strict=True)
        return [self.task(s, y, q, episodes.n_way) for s, y, q in tasks]

    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        return torch.stack([out.logits for out in self.tasks(episodes)])

    def image_encoder(self) -> nn.Module | None:
        # With running statistics a plain Conv-4's embedding depends on its image alone.
        if isinstance(self.embedding, ConditionedConv4):
            return None
        return None if any(m.training for m in self.embedding.modules()) else self.embedding

    def feature_logits(self, episodes: Episodes) -> torch.Tensor:
        tasks = zip(episodes.support_x, episodes.support_y, episodes.query_x, strict=True)
        return torch.stack([self.classify(s, y, q, episodes.n_way).logits for s, y, q in tasks])

    def test_logits(self, episodes: Episodes) -> torch.Tensor:
        with torch.no_grad():
            return self.query_logits(episodes)

    def task_codes(self, episodes: Episodes) -> torch.Tensor | None:
        return torch.stack([out.code for out in self.tasks(episodes)])

    def generated_head(self, episodes: Episodes) -> torch.Tensor | None:
        heads = [out.head for out in self.tasks(episodes)]
        return None if heads[0] is None else torch.stack(heads)

    def generated_filters(self, episodes: Episodes) -> torch.Tensor | None:
        filters = [out.filters for out in self.tasks(episodes)]
        return None if filters[0] is None else torch.stack(filters)


class HypernetFewShot(SupportSetHypernet):
    """Conv-4 (its last block optionally generated) → task encoder → generated head."""

    def __init__(self, embedding: nn.Module, config: HypernetFewShotConfig) -> None:
        super().__init__(embedding)
        features = embedding.embedding_size
        self.task_encoder = TaskEncoder(
            features, config.code, config.encoder_hidden, config.pooling
        )
        self.head = GeneratedHead(features, config.code, config.residual)

    def classify(
        self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, n_way: int
    ) -> TaskOutput:
        code = self.task_encoder(support, support_y, n_way)
        weights = self.head.weights(code.classes, prototypes(support, support_y, n_way))
        return TaskOutput(self.head(query, weights), code.task, weights["weight"])


def support_embedding(config: SupportEncoderConfig, data_info: dict[str, Any], generate: bool):
    """Conv-4 for the data's images, its last block generated from the support set or not."""
    channels, height, _ = data_info["image_shape"]
    if not generate:
        return Conv4(channels, config.hidden, image_size=height)
    return ConditionedConv4(
        channels,
        config.hidden,
        height,
        config.code,
        config.encoder_hidden,
        config.pooling,
        config.residual,
    )


def build(config: HypernetFewShotConfig, data_info: dict[str, Any]) -> HypernetFewShot:
    return HypernetFewShot(support_embedding(config, data_info, config.generate_block), config)


register(
    MethodSpec(
        name="hypernet_fewshot",
        kind="fewshot",
        model_config=HypernetFewShotConfig,
        build=build,
        summary="support-set hypernetwork: a task encoder generates the head (any ways)",
    )
)
