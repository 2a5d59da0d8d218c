"""Hypernetwork + MAML objective (issue 17): the task encoder (hyper/task_encoder.py)
gives each class a code from the support set; an inner loop adapts the codes (and, with
`adapt_last_layer`, the hypernetwork's output layer) to the support loss; the adapted
codes generate the classification head the queries run through. The outer loss is the
query loss after adaptation, differentiated through the inner loop (second order unless
`first_order`). The inner loop is the gradient learners' (methods/gradient/inner_loop.py).

`update: learned` follows HyperMAML (Przewięźlikowski et al. 2022): in place of the
gradient step, a network maps each support example's embedding, its label and the
current predictions to the update, one contribution per (example, class) pair from
[embedding, predicted probability of the class, 1 if it is the example's class], averaged
over the examples: any number of ways, invariant to the order of the support set. It
updates the class codes that generate the head (HyperMAML updates the head's weights
directly; here the head is generated, and the code is what adapts).

Batch norm as ProtoNet's: the Conv-4 encoder embeds each episode once (support and queries
together in training); the inner loop runs on those embeddings."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from hypermeta.hyper.task_encoder import GeneratedHead, TaskEncoder, prototypes
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.gradient.inner_loop import Weights, adapt, sgd_step
from hypermeta.methods.hypernet_fewshot import (
    SupportEncoderConfig,
    SupportSetHypernet,
    TaskOutput,
    support_embedding,
)
from hypermeta.nn.mainnet import mlp


class HyperMAMLConfig(SupportEncoderConfig):
    inner_steps: int = Field(1, ge=0, description="inner steps during meta-training")
    eval_inner_steps: int | None = Field(
        None, ge=0, description="inner steps at meta-test; default: inner_steps"
    )
    inner_lr: float = Field(0.1, gt=0, description="step size of the gradient update (initial)")
    learn_inner_lr: bool = Field(True, description="meta-learn the step size (as LEO, Meta-SGD)")
    first_order: bool = Field(False, description="drop the inner loop's second derivatives")
    adapt_last_layer: bool = Field(
        False, description="also adapt the hypernetwork's output layer (gradient update)"
    )
    update: Literal["gradient", "learned"] = Field(
        "gradient", description="inner update: a gradient step, or HyperMAML's learned one"
    )
    update_hidden: list[int] = Field([64], description="hidden layers of the learned update")

    @model_validator(mode="after")
    def _learned_update_adapts_codes(self) -> HyperMAMLConfig:
        if self.update == "learned" and self.adapt_last_layer:
            raise ValueError(
                "adapt_last_layer needs update: gradient (a learned update adapts codes)"
            )
        return self


class LearnedUpdate(nn.Module):
    """(support embeddings (S, D), current probabilities (S, N), labels (S,)) → the
    update of the class codes (N, code): module docstring."""

    def __init__(self, features: int, code: int, hidden: list[int]) -> None:
        super().__init__()
        self.net = mlp(features + 2, hidden, code)
        # start near no update: the initial codes are already the task encoder's answer
        with torch.no_grad():
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()

    def forward(
        self, support: torch.Tensor, probabilities: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        shots, n_way = probabilities.shape
        own = F.one_hot(labels, n_way).to(support.dtype)
        pairs = torch.cat(
            [
                support.unsqueeze(1).expand(shots, n_way, -1),
                probabilities.unsqueeze(-1),
                own.unsqueeze(-1),
            ],
            -1,
        )
        return self.net(pairs).mean(0)


class HyperMAML(SupportSetHypernet):
    def __init__(self, embedding: nn.Module, config: HyperMAMLConfig) -> None:
        super().__init__(embedding)
        self.config = config
        features = embedding.embedding_size
        self.task_encoder = TaskEncoder(
            features, config.code, config.encoder_hidden, config.pooling
        )
        self.head = GeneratedHead(features, config.code, config.residual)
        if config.update == "learned":
            self.learned_update = LearnedUpdate(features, config.code, config.update_hidden)
        else:  # one scalar step size, on a log scale so it stays positive
            log_lr = torch.tensor(math.log(config.inner_lr))
            self.log_inner_lr = nn.Parameter(log_lr, requires_grad=config.learn_inner_lr)
        self.steps_override: int | None = None

    def steps(self) -> int:
        if self.steps_override is not None:
            return self.steps_override
        if not self.training and self.config.eval_inner_steps is not None:
            return self.config.eval_inner_steps
        return self.config.inner_steps

    @contextmanager
    def with_inner_steps(self, steps: int) -> Iterator[None]:
        was, self.steps_override = self.steps_override, steps
        try:
            yield
        finally:
            self.steps_override = was

    def adapted(
        self, codes: torch.Tensor, support: torch.Tensor, labels: torch.Tensor, n_way: int
    ) -> tuple[Weights, torch.Tensor]:
        """(fast weights after the inner loop, the class means) for one task: `codes`
        (N, code) and, with `adapt_last_layer`, the hypernetwork's output layer."""
        means = prototypes(support, labels, n_way)
        fast: Weights = {"codes": codes}
        if self.config.adapt_last_layer:
            fast |= dict(self.head.model.generator.named_parameters())
        steps = self.steps()
        if self.config.update == "learned":
            for _ in range(steps):
                probabilities = self.head(support, self.head_weights(fast, means)).softmax(-1)
                update = self.learned_update(support, probabilities, labels)
                fast = {**fast, "codes": fast["codes"] + update}
            return fast, means

        def support_loss(weights: Weights, step: int) -> torch.Tensor:
            return F.cross_entropy(self.head(support, self.head_weights(weights, means)), labels)

        def update(weights: Weights, grads: Weights, step: int) -> Weights:
            return sgd_step(weights, grads, self.log_inner_lr.exp())

        second_order = self.training and not self.config.first_order
        path = adapt(fast, support_loss, update, steps, second_order, vmapped=False)
        return path[-1], means

    def head_weights(self, fast: Weights, means: torch.Tensor) -> dict[str, torch.Tensor]:
        generator = {name: w for name, w in fast.items() if name != "codes"}
        return self.head.weights(fast["codes"], means, generator)

    def classify(
        self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, n_way: int
    ) -> TaskOutput:
        code = self.task_encoder(support, support_y, n_way)
        fast, means = self.adapted(code.classes, support, support_y, n_way)
        weights = self.head_weights(fast, means)
        return TaskOutput(self.head(query, weights), fast["codes"].mean(0), weights["weight"])


def build(config: HyperMAMLConfig, data_info: dict[str, Any]) -> HyperMAML:
    return HyperMAML(support_embedding(config, data_info, generate=False), config)


register(
    MethodSpec(
        name="hypermaml",
        kind="fewshot",
        model_config=HyperMAMLConfig,
        build=build,
        summary="support-set hypernetwork head, its task code adapted by an inner loop "
        "(gradient, or HyperMAML's learned update)",
    )
)
