"""Hypernetwork + Prototypical objective (issue 17): the task encoder
(hyper/task_encoder.py) reads a task's support set through Conv-4's first three blocks
and a hypernetwork generates the last block's convolution from the task code; support
and queries are embedded by that generated network, and the loss is ProtoNet's on it:

    min over the hypernetwork and shared blocks of E_task[CE(softmax(−d(f_gen(x_q), c_k)))],

c_k the class means of the generated-embedding supports. ProtoNet is the case of a
block that does not depend on the task."""

from __future__ import annotations

from typing import Any

import torch

from hypermeta.hyper.task_encoder import prototypes, squared_distances
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.hypernet_fewshot import (
    SupportEncoderConfig,
    SupportSetHypernet,
    TaskOutput,
    support_embedding,
)


class HyperProto(SupportSetHypernet):
    """Prototypes and distances in a task-generated embedding."""

    def classify(
        self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, n_way: int
    ) -> TaskOutput:
        centres = prototypes(support, support_y, n_way)
        return TaskOutput(-squared_distances(query, centres))


def build(config: SupportEncoderConfig, data_info: dict[str, Any]) -> HyperProto:
    return HyperProto(support_embedding(config, data_info, generate=True))


register(
    MethodSpec(
        name="hyperproto",
        kind="fewshot",
        model_config=SupportEncoderConfig,
        build=build,
        summary="ProtoNet on a Conv-4 whose last block a support-set hypernetwork generates",
    )
)
