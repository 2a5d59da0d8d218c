"""The LSTM meta-learner (Ravi & Larochelle 2017): with its gates fixed it is gradient
descent (a known answer), the meta-gradient reaches the meta-learner and θ_0, and it
learns a few-shot task far above chance."""

from __future__ import annotations

import math

import pytest
import torch
from maml_helpers import IMAGES, build, prototype_episodes
from torch import nn

from hypermeta.data.episodes import Episodes
from hypermeta.methods.lstm_meta import preprocess

torch.set_num_threads(1)


def double_episodes(episodes: Episodes) -> Episodes:
    return Episodes(
        episodes.support_x.double(),
        episodes.support_y,
        episodes.query_x.double(),
        episodes.query_y,
        episodes.n_way,
    )


def test_preprocessing_is_log_magnitude_and_sign_above_e_to_minus_p_else_scaled_value():
    x = torch.tensor([math.exp(-2.0), -math.exp(-5.0), 1e-6, -2e-6], dtype=torch.float64)
    expected = torch.tensor(
        [[-0.2, 1.0], [-0.5, -1.0], [-1.0, math.exp(10) * 1e-6], [-1.0, -math.exp(10) * 2e-6]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(preprocess(x, 10.0), expected)


def test_the_paper_initialises_forget_near_one_and_the_input_gate_small():
    model = build("lstm_meta_learner", IMAGES, n_way=3, width=4)
    cell = model.parameter_cell
    assert 4.0 <= cell.forget_gate.bias.item() <= 6.0
    assert -5.0 <= cell.input_gate.bias.item() <= -4.0
    for gate in (cell.forget_gate, cell.input_gate):
        assert gate.weight.abs().max() <= 0.01


def test_input_gate_bias_sets_the_range_of_the_first_step_size():
    model = build("lstm_meta_learner", IMAGES, n_way=3, width=4, input_gate_bias=[-2.5, -2.0])
    bias = model.parameter_cell.input_gate.bias.item()
    assert -2.5 <= bias <= -2.0  # a first step size σ(b_I) of about 0.1
    assert 4.0 <= model.parameter_cell.forget_gate.bias.item() <= 6.0  # unchanged


@pytest.mark.parametrize("vectorize", [True, False])
def test_with_forget_gate_one_and_input_gate_alpha_a_step_is_gradient_descent(vectorize):
    """Gate weights zero, b_F so large that σ(b_F) is 1 in float64, σ(b_I) = α: the
    meta-learner's step is θ − α∇L of the support loss, whatever its first LSTM layer says."""
    torch.manual_seed(0)
    alpha = 0.3
    model = build("lstm_meta_learner", IMAGES, n_way=3, width=3, vectorize=vectorize).double()
    cell = model.parameter_cell
    with torch.no_grad():
        for gate in (cell.forget_gate, cell.input_gate):
            gate.weight.zero_()
        cell.forget_gate.bias.fill_(40.0)
        cell.input_gate.bias.fill_(math.log(alpha / (1 - alpha)))
    episodes = double_episodes(prototype_episodes(torch.Generator().manual_seed(1), 1, 3, 2, 2))
    support_x, support_y = episodes.support_x[0], episodes.support_y[0]
    params = dict(model.target.named_parameters())

    stepped = model.trajectory(params, support_x, support_y, steps=2)

    for before, after in ((0, 1), (1, 2)):
        start = {n: w.detach().requires_grad_() for n, w in stepped[before].items()}
        logits = torch.func.functional_call(model.target, start, (support_x,))
        loss = nn.functional.cross_entropy(logits, support_y)
        grads = torch.autograd.grad(loss, list(start.values()))
        for (name, w), g in zip(start.items(), grads, strict=True):
            torch.testing.assert_close(stepped[after][name], w - alpha * g, rtol=1e-12, atol=1e-14)


def test_the_meta_gradient_reaches_the_meta_learner_and_the_initial_parameters():
    torch.manual_seed(0)
    model = build("lstm_meta_learner", IMAGES, n_way=3, width=3, inner_steps=2).train()
    episodes = prototype_episodes(torch.Generator().manual_seed(1), 2, 3, 1, 2)
    loss, _ = model.loss(episodes)
    named = dict(model.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values())), strict=True))
    reached = {name for name, g in grads.items() if g.abs().sum() > 0}
    for owner in ("gradient_lstm.", "parameter_cell.input_gate.", "parameter_cell.forget_gate."):
        assert {n for n in named if n.startswith(owner)} <= reached, owner
    assert {n for n in named if n.startswith("target.")} <= reached


@pytest.mark.slow
def test_the_lstm_meta_learner_learns_a_few_shot_task_far_above_chance():
    """5-way 1-shot on fresh random classes (chance 20%) after 50 meta-iterations of 4
    tasks, as the gradient learners' test (test_maml)."""
    torch.manual_seed(0)
    model = build("lstm_meta_learner", IMAGES, n_way=5, width=8, inner_steps=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        model.train()
        model.meta_step(prototype_episodes(generator, 4, 5, 1, 3), optimizer)
    test = prototype_episodes(torch.Generator().manual_seed(99), 40, 5, 1, 3)
    with model.meta_test("transductive"):
        accuracy = (model.test_logits(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy >= 0.6
