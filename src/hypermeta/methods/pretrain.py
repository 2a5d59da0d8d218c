"""Supervised pre-training for learners on frozen features, as LEO's (Rusu et al. 2019
§4.2): a Conv-4 classifier over every meta-training class (each rotation of a character
is a class of its own, data/omniglot.py), so no class of the validation or test split is
ever seen. It trains on the images of the engine's episodes with their split class
labels (`Episodes.classes`): each step a class-balanced minibatch of meta_batch × n_way
classes, k_shot + query drawings each. A needing experiment (`needs: [pretrain_omniglot]`)
freezes its encoder, the network without the head.

At meta-test it is a few-shot learner like the others, ProtoNet's nearest class mean on
its features, on the same fixed test episodes: the baseline the frozen-feature learners
build on."""

from __future__ import annotations

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
from hypermeta.methods.protonet import PrototypicalNetwork
from hypermeta.nn.conv4 import Conv4


class PretrainConfig(StrictModel):
    hidden: int = Field(64, gt=0, description="filters per Conv-4 block")


class PretrainedClassifier(PrototypicalNetwork):
    """Conv-4 + a linear head over the `num_classes` classes of the training split."""

    def __init__(self, encoder: Conv4, num_classes: int) -> None:
        super().__init__(encoder)
        self.head = nn.Linear(encoder.embedding_size, num_classes)

    def meta_step(self, episodes: Episodes, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        if episodes.classes is None:
            raise HypermetaError(
                "pre-training needs episodes drawn from a split (their class labels); "
                "train it with the pipeline's train stage."
            )
        images = torch.cat([episodes.support_x.flatten(0, 1), episodes.query_x.flatten(0, 1)])
        labels = torch.cat(
            [
                episodes.classes.gather(1, episodes.support_y).flatten(),
                episodes.classes.gather(1, episodes.query_y).flatten(),
            ]
        )
        logits = self.head(self.encoder(images.contiguous(memory_format=torch.channels_last)))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item()}


def build(config: PretrainConfig, data_info: dict[str, Any]) -> PretrainedClassifier:
    channels, height, _ = data_info["image_shape"]
    encoder = Conv4(channels, config.hidden, image_size=height)
    # The head's classes are the prepared training split's; a learner built without one
    # (to inspect its interface) gets a one-class head.
    return PretrainedClassifier(encoder, data_info.get("counts", {}).get("train", 1))


register(
    MethodSpec(
        name="pretrain",
        kind="fewshot",
        model_config=PretrainConfig,
        build=build,
        summary="Conv-4 classifier over all meta-training classes (features for LEO); "
        "meta-test: nearest class mean of its features",
    )
)
