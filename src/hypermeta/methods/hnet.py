"""HNET (von Oswald et al. 2020): a chunked hypernetwork generates every weight of the
main network from a learned per-task embedding e_t; learning task T adds the output
regulariser (continual/regularizer.py) that keeps h(e_t) of earlier tasks in place.

The main network holds no parameters of its own: `take_parameters` removes them all,
and it runs as a `GeneratedModel` whose generator is conditioned on the task id (the one
mechanism for generated weights, hyper/generated.py)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hypermeta.continual.learner import Batch, ContinualLearner
from hypermeta.continual.regularizer import LookaheadStep, lookahead_delta, output_regularizer
from hypermeta.data.continual import TaskSequence
from hypermeta.hyper import GeneratedModel, effective_size, take_parameters, target_shapes
from hypermeta.hyper.chunked import ChunkedHypernet
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.finetune import MainNetConfig
from hypermeta.nn.mainnet import Activation, mlp


class HNETConfig(MainNetConfig):
    hnet_hidden: list[int] = Field([100, 100], description="hidden widths of the hypernetwork")
    hnet_activation: Activation = Field("relu", description="the hypernetwork's hidden units")
    chunk_size: int = Field(4000, gt=0, description="target weights produced per chunk")
    task_dim: int = Field(96, gt=0, description="size of each task embedding e_t")
    chunk_dim: int = Field(96, gt=0, description="size of each chunk embedding")
    beta: float = Field(0.01, ge=0, description="β, strength of the output regulariser")
    lookahead: bool = Field(False, description="regularise at Θ + ΔΘ (the look-ahead of eq. 2)")
    lookahead_step: LookaheadStep = Field(
        "adam",
        description="ΔΘ: Adam's next step from its state (the authors' default) or -lr·∇ (sgd)",
    )


class HNETLearner(ContinualLearner):
    network: GeneratedModel  # the target run with the weights hnet generates for a task id

    def __init__(self, config: HNETConfig, data_info: dict[str, Any]) -> None:
        num_tasks, classes = data_info["num_tasks"], data_info["classes_per_task"]
        super().__init__(num_tasks, classes)
        self.target = mlp(data_info["input_size"], config.hidden, classes)
        shapes = take_parameters(self.target, list(target_shapes(self.target)))
        self.hnet = ChunkedHypernet(
            shapes,
            num_tasks,
            config.task_dim,
            config.chunk_dim,
            config.chunk_size,
            config.hnet_hidden,
            config.hnet_activation,
        )
        # `target` and `hnet` stay the learner's children, so the state_dict keys of saved
        # models and checkpoints stay `hnet.*` (an earlier run's checkpoint resumes);
        # `network` runs them as one GeneratedModel and is kept out of the module tree so
        # that nothing is registered, saved or loaded twice.
        object.__setattr__(self, "network", GeneratedModel(self.target, self.hnet))
        self.beta, self.lookahead = config.beta, config.lookahead
        self.lookahead_step = config.lookahead_step
        # h(e_t; Θ*) for every finished task, refreshed at the end of each task.
        self.register_buffer("stored_targets", torch.zeros(num_tasks, self.hnet.num_weights))

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.network(x, condition=task)

    def all_task_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.network(x, condition=t) for t in range(self.num_tasks)])

    def training_loss(
        self, batches: list[Batch], task: int, optimizer: torch.optim.Optimizer
    ) -> torch.Tensor:
        ((x, y, _),) = batches
        task_loss = F.cross_entropy(self(x, task), y)
        if task == 0 or self.beta == 0:
            return task_loss
        delta = None
        if self.lookahead:
            shared = {n: p for n, p in self.hnet.named_parameters() if n != "task_embeddings"}
            delta = lookahead_delta(task_loss, shared, optimizer, self.lookahead_step)
        reg = output_regularizer(
            self.hnet,
            self.hnet.task_embeddings[:task],
            self.stored_targets[:task],
            self.beta,
            delta,
        )
        return task_loss + reg

    @torch.no_grad()
    def end_task(self, task: int, data: TaskSequence) -> None:
        embeddings = self.hnet.task_embeddings[: task + 1]
        self.stored_targets[: task + 1] = self.hnet.flat_weights(embeddings)

    def main_network_size(self) -> int:
        return effective_size(self.network)


def build(config: HNETConfig, data_info: dict[str, Any]) -> nn.Module:
    return HNETLearner(config, data_info)


register(
    MethodSpec(
        name="hnet",
        kind="continual",
        model_config=HNETConfig,
        build=build,
        summary="chunked task-conditioned hypernetwork with output regulariser",
    )
)
