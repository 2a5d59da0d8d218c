"""Supervised pre-training for learners on frozen features, as LEO's (Rusu et al. 2019
§4.2): a Conv-4 classifier over every meta-training class (each rotation of a character
is a class of its own, data/omniglot.py), so no class of the validation or test split is
ever seen. It trains on the images of the engine's episodes with their split class
labels (`Episodes.classes`): each step a class-balanced minibatch of meta_batch × n_way
classes, k_shot + query drawings each, its softmax over every training class
(`softmax_over: all`, the usual classifier) or over the episode's classes only (`batch`:
a sampled softmax, for a few hundred steps on a CPU, where each of Omniglot's thousands
of classes is drawn a few times). A needing experiment (`needs: [pretrain_omniglot]`)
freezes its encoder, the network without the head.

At meta-test it is a few-shot learner like the others, ProtoNet's nearest class mean on
its features, on the same fixed test episodes: the baseline the frozen-feature learners
build on."""

from __future__ import annotations

from typing import Any, Literal

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
    softmax_over: Literal["all", "batch"] = Field(
        "all",
        description="the classes each step's softmax normalises over: every training class, "
        "or only those of its episode (a sampled softmax: learns in far fewer steps)",
    )


class PretrainedClassifier(PrototypicalNetwork):
    """Conv-4 + a linear head over the `num_classes` classes of the training split."""

    def __init__(self, encoder: Conv4, num_classes: int, softmax_over: str = "all") -> None:
        super().__init__(encoder)
        self.head = nn.Linear(encoder.embedding_size, num_classes)
        self.softmax_over = softmax_over

    def meta_step(self, episodes: Episodes, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        if episodes.classes is None:
            raise HypermetaError(
                "pre-training needs episodes drawn from a split (their class labels); "
                "train it with the pipeline's train stage."
            )
        images = torch.cat([episodes.support_x, episodes.query_x], dim=1)  # (B, M, C, H, W)
        within = torch.cat([episodes.support_y, episodes.query_y], dim=1)  # (B, M) in 0..N-1
        embedded = self.encoder(
            images.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        ).unflatten(0, images.shape[:2])
        if self.softmax_over == "batch":  # each episode's rows of the head
            weight, bias = self.head.weight[episodes.classes], self.head.bias[episodes.classes]
            logits = embedded @ weight.transpose(1, 2) + bias.unsqueeze(1)
            labels = within
        else:
            logits, labels = self.head(embedded), episodes.classes.gather(1, within)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
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
    classes = data_info.get("counts", {}).get("train", 1)
    return PretrainedClassifier(encoder, classes, config.softmax_over)


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
