"""MAML++'s additions to MAML: annealed multi-step loss and derivative order, learned
per-step inner lrs and batch-norm weights, per-step running statistics at meta-test."""

from __future__ import annotations

import pytest
import torch
from maml_helpers import IMAGES, REGRESSION, build, others_changed, prototype_episodes
from tolerance import assert_close_reordered

torch.set_num_threads(1)


def test_mamlpp_anneals_multi_step_loss_and_derivative_order():
    model = build(
        "mamlpp", REGRESSION, inner_steps=4, multi_step_loss_fraction=0.5, first_order_fraction=0.25
    )
    model.train()
    model.on_iteration(0, 100)
    torch.testing.assert_close(model.step_loss_weights(), torch.full((4,), 0.25))
    assert not model.second_order()
    model.on_iteration(25, 100)
    weights = model.step_loss_weights()
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[0].item() == pytest.approx(0.125) and weights[-1] > 0.6
    assert model.second_order()
    model.on_iteration(60, 100)
    torch.testing.assert_close(model.step_loss_weights(), torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_mamlpp_per_step_parameters_get_gradients_and_drift_apart():
    """Per-step inner lrs (LSLR), batch-norm weights (BNWB) and running statistics (BNRS)
    start equal across steps; second order, every step's entries get a gradient, and a
    few meta-steps (multi-step loss on: queries predicted after every step) leave each
    step with its own values."""
    torch.manual_seed(0)
    model = build(
        "mamlpp", IMAGES, n_way=3, width=4, inner_steps=3,
        first_order_fraction=0.0,
    )  # fmt: skip
    model.train()
    model.on_iteration(0, 100)
    generator = torch.Generator().manual_seed(0)
    model.loss(prototype_episodes(generator, 3, 3, 1, 2))[0].backward()
    assert model.second_order()
    assert (model.inner_lrs.grad != 0).all()  # every (parameter tensor, step) entry
    for table in model.per_step_norm:
        assert (table.grad.flatten(1).abs().sum(1) > 0).all()  # every step's row

    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        model.meta_step(prototype_episodes(generator, 3, 3, 1, 2), optimizer)
    for step in range(1, 3):
        assert not torch.allclose(model.inner_lrs[:, 0], model.inner_lrs[:, step])
        for table in model.per_step_norm:
            assert not torch.allclose(table[0], table[step])
        for running in model.running_statistics:
            assert not torch.allclose(running.mean[0], running.mean[step])
            assert not torch.allclose(running.var[0], running.var[step])
    for running in model.running_statistics:  # every row moved from its start
        assert (running.mean != 0).any(1).all() and (running.var != 1).any(1).all()


def test_mamlpp_per_step_stats_meta_test_normalises_queries_with_the_last_steps_statistics():
    """Queries after 2 steps use row 1; the support set keeps its own batch statistics,
    so row 0 (its step's) plays no part; transductive uses none of them."""
    torch.manual_seed(0)
    model = build("mamlpp", IMAGES, n_way=3, width=4, inner_steps=2)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(3):
        model.meta_step(prototype_episodes(generator, 3, 3, 1, 2), optimizer)
    episodes = prototype_episodes(generator, 2, 3, 1, 2)
    changed = others_changed(episodes)
    with model.meta_test("per_step_stats"):
        running = model.test_logits(episodes)
        # each query on its own: the other queries do not move its answer
        assert_close_reordered(model.test_logits(changed)[:, 0], running[:, 0])
    with model.meta_test("transductive"):
        transductive = model.test_logits(episodes)
    assert not torch.allclose(running, transductive, atol=1e-3)
    with torch.no_grad():
        model.running_statistics[0].var[0].mul_(4)
    with model.meta_test("per_step_stats"):
        torch.testing.assert_close(model.test_logits(episodes), running)
    with torch.no_grad():
        model.running_statistics[0].var[1].mul_(4)
    with model.meta_test("per_step_stats"):
        assert not torch.allclose(model.test_logits(episodes), running, atol=1e-3)
    with model.meta_test("transductive"):
        torch.testing.assert_close(model.test_logits(episodes), transductive)
