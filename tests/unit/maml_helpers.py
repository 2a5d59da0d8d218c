"""Shared set-up of the gradient meta-learner tests: building a learner by its registered
name, and toy tasks that only adapting to the support set solves."""

from __future__ import annotations

import torch
from torch import nn

from hypermeta.config import validate_section
from hypermeta.data.episodes import Episodes
from hypermeta.methods import get_method

REGRESSION = {"task": "regression", "input_dim": 1, "output_dim": 1}
IMAGES = {"image_shape": [1, 16, 16]}


def build(name: str, data_info: dict, **model) -> nn.Module:
    spec = get_method(name)
    return spec.build(validate_section(spec.model_config, model, "model"), data_info)


def prototype_episodes(
    generator: torch.Generator, tasks: int, n_way: int, k_shot: int, n_query: int, side: int = 16
) -> Episodes:
    """Each task: N random prototype images; examples are prototypes plus noise. Solvable
    only by adapting to the support set (classes are fresh in every task)."""
    protos = torch.randn(tasks, n_way, 1, 1, side, side, generator=generator)

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(tasks, n_way, per_class, 1, side, side, generator=generator)
        x = (protos.expand(-1, -1, per_class, -1, -1, -1) + 0.5 * noise).flatten(1, 2)
        return x, torch.arange(n_way).repeat_interleave(per_class).repeat(tasks, 1)

    support_x, support_y = draw(k_shot)
    query_x, query_y = draw(n_query)
    return Episodes(support_x, support_y, query_x, query_y, n_way)


def others_changed(episodes: Episodes) -> Episodes:
    """`episodes` with every query but the first of each task replaced by noise."""
    query_x = episodes.query_x.clone()
    query_x[:, 1:] = torch.randn_like(query_x[:, 1:]) * 3
    return Episodes(episodes.support_x, episodes.support_y, query_x, episodes.query_y, 3)


def sine_like_episodes(generator: torch.Generator, tasks: int = 3) -> Episodes:
    x = torch.rand(tasks, 6, 1, generator=generator, dtype=torch.float64) * 10 - 5
    amplitude = torch.rand(tasks, 1, 1, generator=generator, dtype=torch.float64) * 4 + 1
    y = amplitude * torch.sin(x)
    return Episodes(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:], n_way=0)


def flat_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.flatten() for g in grads])


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])
