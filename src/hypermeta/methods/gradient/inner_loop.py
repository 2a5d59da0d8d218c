"""The inner loop of gradient-based meta-learning (Finn et al. 2017), as pure functions.

Fast weights are the project's one weight mechanism: a dict of named tensors shaped like
a target network's parameters, run through `torch.func.functional_call` by the caller's
loss. `adapt` takes inner steps on one task's support loss; the meta-gradient is the
backward of the outer (query) loss through them: second order when the inner gradients
stay in the graph, first order (FOMAML) when they are detached. Nothing here knows the
network, the task kind or how tasks are batched; the caller passes each in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.func import grad_and_value

Weights = dict[str, torch.Tensor]
# The support loss of one task at fast weights `fast` and inner step `step`.
StepLoss = Callable[[Weights, int], torch.Tensor]
# One inner update: (fast weights, their gradients, inner step) → the next fast weights.
Update = Callable[[Weights, Weights, int], Weights]


def sgd_step(fast: Weights, grads: Weights, lr: float | Mapping[str, torch.Tensor]) -> Weights:
    """Each weight minus its step size times its gradient: `lr` one scalar (MAML) or one
    step size per weight name, a scalar or a tensor shaped like the weight (Meta-SGD)."""
    if isinstance(lr, Mapping):
        return {name: w - lr[name] * grads[name] for name, w in fast.items()}
    return {name: w - lr * grads[name] for name, w in fast.items()}


def inner_gradients(
    loss: Callable[[Weights], torch.Tensor], fast: Weights, keep_graph: bool, vmapped: bool
) -> Weights:
    """∇ of `loss` at `fast`, kept in the graph (`keep_graph`, for second order) or not.

    Under vmap (`vmapped`) that takes `torch.func.grad`; a plain loop over tasks uses
    `torch.autograd.grad`, the same numbers without functorch's per-operation wrapping
    (and without importing torch._dynamo, about 1.4 s of every pipeline job that adapts).
    Autograd is on either way: meta-test adapts under no_grad."""
    return loss_and_gradients(loss, fast, keep_graph, vmapped)[1]


def loss_and_gradients(
    loss: Callable[[Weights], torch.Tensor], fast: Weights, keep_graph: bool, vmapped: bool
) -> tuple[torch.Tensor, Weights]:
    """`loss` at `fast` (detached) and its gradients, as `inner_gradients` takes them: for
    an update that reads the loss too (the LSTM meta-learner)."""
    if vmapped:
        grads, value = grad_and_value(loss)(fast)
        grads = grads if keep_graph else {n: g.detach() for n, g in grads.items()}
        return value.detach(), grads
    with torch.enable_grad():
        start = {n: w if w.requires_grad else w.detach().requires_grad_() for n, w in fast.items()}
        value = loss(start)
        grads = torch.autograd.grad(
            value, list(start.values()), create_graph=keep_graph, materialize_grads=True
        )
    return value.detach(), dict(zip(start, grads, strict=True))


def adapt(
    params: Weights,
    support_loss: StepLoss,
    update: Update,
    steps: int,
    second_order: bool,
    vmapped: bool,
) -> list[Weights]:
    """Fast weights of ONE task after 0, 1, ..., `steps` inner steps from `params`."""
    fast, path = params, [params]
    for step in range(steps):

        def loss(weights: Weights, step: int = step) -> torch.Tensor:
            return support_loss(weights, step)

        grads = inner_gradients(loss, fast, second_order, vmapped)
        fast = update(fast, grads, step)
        path.append(fast)
    return path


def add_gradients(total: torch.Tensor | None, more: torch.Tensor | None) -> torch.Tensor | None:
    """Sum of two gradients, where None (a parameter the loss did not reach) adds nothing."""
    if more is None:
        return total
    return more if total is None else total + more


OuterLoss = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


def meta_gradient(
    outer_loss: OuterLoss, params: list[torch.Tensor], tasks: range, total: int, chunk: int | None
) -> tuple[list[torch.Tensor | None], list[torch.Tensor], list[torch.Tensor]]:
    """The meta-gradient over `params` of the tasks `tasks` of a meta-batch of `total`:
    (gradients, each chunk's weighted loss, each chunk's outputs), losses and outputs
    detached. `outer_loss(start, stop)` is (mean outer loss, outputs) of tasks start to
    stop - 1. A backward pass per `chunk` tasks (None: all at once) bounds memory, each
    chunk's graph freed before the next; weighted by their share of `total`, the chunks'
    gradients add up to the whole batch's, the loss being a mean over equal-sized tasks."""
    size = chunk or len(tasks)
    summed: list[torch.Tensor | None] = [None] * len(params)
    losses, outs = [], []
    for start in range(tasks.start, tasks.stop, size):
        stop = min(start + size, tasks.stop)
        share = (stop - start) / total
        loss, out = outer_loss(start, stop)
        grads = torch.autograd.grad(loss * share, params, allow_unused=True)
        summed = [add_gradients(a, b) for a, b in zip(summed, grads, strict=True)]
        losses.append(loss.detach() * share)
        outs.append(out.detach())
    return summed, losses, outs
