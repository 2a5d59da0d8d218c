"""The inner loop's pure functions (gradient/inner_loop.py) on a loss whose adaptation
and meta-gradient are known in closed form: L(w) = ½‖w − c‖², so k SGD steps of size α
give w_k = c + (1 − α)^k (w_0 − c), and dw_k/dw_0 = (1 − α)^k exactly."""

from __future__ import annotations

import pytest
import torch

from hypermeta.methods.gradient.inner_loop import adapt, meta_gradient, sgd_step

ALPHA, STEPS = 0.3, 3


def quadratic(centre: torch.Tensor):
    def support_loss(fast, step):
        return 0.5 * (fast["w"] - centre).pow(2).sum()

    return support_loss


@pytest.mark.parametrize("vmapped", [False, True])
@pytest.mark.parametrize("second_order", [True, False])
def test_adapt_takes_the_sgd_steps_and_differentiates_through_them(vmapped, second_order):
    centre = torch.tensor([1.0, -2.0], dtype=torch.float64)
    w0 = torch.tensor([0.5, 0.5], dtype=torch.float64, requires_grad=True)

    def update(fast, grads, step):
        return sgd_step(fast, grads, ALPHA)

    def final(w):
        path = adapt({"w": w}, quadratic(centre), update, STEPS, second_order, vmapped)
        assert len(path) == STEPS + 1 and path[0]["w"] is w
        return path[-1]["w"]

    # under vmap the inner gradients come from torch.func: map over a batch of one task
    adapted = torch.func.vmap(final)(w0.unsqueeze(0))[0] if vmapped else final(w0)
    shrink = (1 - ALPHA) ** STEPS
    torch.testing.assert_close(adapted, centre + shrink * (w0 - centre))
    (jacobian,) = torch.autograd.grad(adapted.sum(), w0)
    # second order: the whole (1 − α)^k; first order: only the last step's w_k = w_{k-1}
    # − α·g with g held constant, whose derivative is 1
    torch.testing.assert_close(jacobian, torch.full_like(w0, shrink if second_order else 1.0))


def test_sgd_step_takes_one_scalar_or_a_step_size_per_weight():
    fast = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)}
    grads = {"a": torch.tensor([1.0, -1.0]), "b": torch.tensor(2.0)}
    scalar = sgd_step(fast, grads, 0.5)
    torch.testing.assert_close(scalar["a"], torch.tensor([0.5, 2.5]))
    torch.testing.assert_close(scalar["b"], torch.tensor(2.0))
    per_weight = {"a": torch.tensor([0.1, 1.0]), "b": torch.tensor(0.25)}
    stepped = sgd_step(fast, grads, per_weight)
    torch.testing.assert_close(stepped["a"], torch.tensor([0.9, 3.0]))
    torch.testing.assert_close(stepped["b"], torch.tensor(2.5))


@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_meta_gradient_in_chunks_is_the_mean_losss_gradient(chunk):
    """Tasks 1..3 of 4 (a task worker's run): each chunk weighted by its share of the 4."""
    w = torch.tensor([0.5, -1.0], requires_grad=True)
    targets = torch.arange(8.0).view(4, 2)

    def outer_loss(start, stop):
        out = w * targets[start:stop]
        return out.pow(2).sum(1).mean(), out

    grads, losses, outs = meta_gradient(outer_loss, [w], range(1, 4), 4, chunk)
    expected = 2 * w.detach() * targets[1:4].pow(2).sum(0) / 4  # ∇ of Σ_tasks ‖w·t‖² / 4
    torch.testing.assert_close(grads[0], expected)
    torch.testing.assert_close(
        torch.stack(losses).sum(), (w.detach() * targets[1:4]).pow(2).sum() / 4
    )
    torch.testing.assert_close(torch.cat(outs), w.detach() * targets[1:4])
    assert len(losses) == {None: 1, 1: 3, 2: 2}[chunk]
