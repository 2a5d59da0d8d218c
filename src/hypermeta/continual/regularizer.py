"""The hypernetwork output regulariser of von Oswald et al. (2020), eq. 2.

While task T is learned, the weights the hypernetwork produces for the stored
embeddings of tasks 1..T-1 are pulled back to where they were when task T began:

    β / (T-1) · Σ_{t<T} ‖h(e_t; Θ + ΔΘ) − h(e_t; Θ*)‖²

h(e_t; Θ*) are fixed targets (no gradient reaches them), so old tasks are kept without
storing any of their data. ΔΘ is the optional look-ahead: the change the current task's
loss alone is about to make, detached, so the regulariser counters the update before it
happens. As in the authors' hypnettorch (`calc_delta_theta`), ΔΘ imitates the optimizer's
own next step (Adam, from its moments) by default, or is one plain step -lr·∇Θ L_task.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from hypermeta.hyper.chunked import ChunkedHypernet

LookaheadStep = Literal["adam", "sgd"]


def output_regularizer(
    hnet: ChunkedHypernet,
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    beta: float,
    delta: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """β · mean over stored tasks of ‖h(e_t; Θ + ΔΘ) − target_t‖².

    `embeddings` (k, task_dim) and `targets` (k, num_weights) are detached here: the
    penalty moves the hypernetwork's weights Θ, never what it is held to."""
    if len(embeddings) == 0:
        return torch.zeros((), device=targets.device)
    params = None
    if delta is not None:
        params = {name: p + delta[name] for name, p in hnet.named_parameters() if name in delta}
    produced = hnet.flat_weights(embeddings.detach(), params)
    return beta * (produced - targets.detach()).pow(2).sum(dim=1).mean()


def lookahead_delta(
    task_loss: torch.Tensor,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    step: LookaheadStep,
) -> dict[str, torch.Tensor]:
    """ΔΘ, detached: what `optimizer` would change in `params` stepping on `task_loss` alone.

    "adam" imitates torch's Adam from its state without touching it; "sgd" is -lr·∇Θ."""
    names = list(params)
    grads = torch.autograd.grad(
        task_loss, [params[n] for n in names], retain_graph=True, allow_unused=True
    )
    groups = {p: group for group in optimizer.param_groups for p in group["params"]}
    delta = {}
    for name, grad in zip(names, grads, strict=True):
        if grad is None:
            continue
        param, grad = params[name], grad.detach()
        if step == "sgd":
            delta[name] = -groups[param]["lr"] * grad
        else:
            # .get: indexing the optimizer's state (a defaultdict) would add an entry.
            delta[name] = adam_change(grad, optimizer.state.get(param, {}), groups[param])
    return delta


def adam_change(grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
    """The change torch.optim.Adam's next step makes for `grad`, from the parameter's
    state (empty before its first step: zero moments, step 0), in torch's own order of
    operations so the two agree to rounding."""
    if group["amsgrad"] or group["weight_decay"] or group["maximize"]:
        raise ValueError("the Adam look-ahead imitates plain Adam (no amsgrad, decay, maximize)")
    beta1, beta2 = group["betas"]
    step = float(state.get("step", 0)) + 1
    zeros = torch.zeros_like(grad)
    exp_avg = state.get("exp_avg", zeros).lerp(grad, 1 - beta1)
    exp_avg_sq = state.get("exp_avg_sq", zeros).mul(beta2).addcmul(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step) + group["eps"]
    return -group["lr"] / (1 - beta1**step) * exp_avg / denom
