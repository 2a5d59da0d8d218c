"""hypermaml: the meta-gradient through the inner loop against finite differences, the
inner loop lowering the support loss, and accuracy against inner steps in the engine
and the figures. (Properties shared with the other support-set hypernetworks:
test_hypernet_fewshot.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fewshot_helpers import fewshot_experiment, prepared_omniglot_small, stage_context
from maml_helpers import IMAGES, build, prototype_episodes

from hypermeta.engine.fewshot import FewShotEngine, check_regimes
from hypermeta.errors import HypermetaError
from hypermeta.plots.fewshot import FewShotPlotter

TINY = {"hidden": 3, "code": 3, "encoder_hidden": [4], "inner_steps": 2, "inner_lr": 0.5}


def tiny(**model) -> torch.nn.Module:
    torch.manual_seed(0)
    return build("hypermaml", IMAGES, **(TINY | model)).double().train()


def outer_loss(model, batch) -> torch.Tensor:
    return model.loss(batch)[0]


@pytest.mark.parametrize("model", [{}, {"adapt_last_layer": True}, {"update": "learned"}])
def test_the_meta_gradient_matches_finite_differences(model):
    """Second order through two inner steps, float64: the directional derivative of the
    outer loss along a random direction, by autograd and by central differences."""
    learner = tiny(**model)
    batch = prototype_episodes(torch.Generator().manual_seed(0), 2, 3, 1, 2)
    batch.support_x, batch.query_x = batch.support_x.double(), batch.query_x.double()
    params = [p for p in learner.parameters() if p.requires_grad]
    grads = torch.autograd.grad(outer_loss(learner, batch), params)
    generator = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction, strict=True)).item()
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction, strict=True):
            p.add_(eps * d)
        plus = outer_loss(learner, batch).item()
        for p, d in zip(params, direction, strict=True):
            p.sub_(2 * eps * d)
        minus = outer_loss(learner, batch).item()
    numeric = (plus - minus) / (2 * eps)
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)


def test_first_order_drops_the_inner_loops_second_derivatives():
    batch = prototype_episodes(torch.Generator().manual_seed(0), 2, 3, 1, 2)
    batch.support_x, batch.query_x = batch.support_x.double(), batch.query_x.double()
    second, first = tiny(), tiny(first_order=True)
    grads = [
        torch.autograd.grad(outer_loss(m, batch), m.task_encoder.parameters())
        for m in (second, first)
    ]
    assert not all(torch.allclose(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("model", [{}, {"update": "learned"}])
def test_more_inner_steps_change_the_answer_and_gradient_steps_lower_the_support_loss(model):
    learner = tiny(**model)
    batch = prototype_episodes(torch.Generator().manual_seed(0), 1, 3, 2, 2)
    support_x, support_y = batch.support_x[0].double(), batch.support_y[0]
    with torch.no_grad():
        features = learner.embedding(support_x)
        code = learner.task_encoder(features, support_y, 3)
    losses = []
    for steps in (0, 1, 2):
        with learner.with_inner_steps(steps):
            fast, means = learner.adapted(code.classes, features, support_y, 3)
        logits = learner.head(features, learner.head_weights(fast, means))
        losses.append(F.cross_entropy(logits, support_y).item())
    assert len(set(losses)) == 3
    if not model:
        assert losses[0] > losses[1] > losses[2]


def test_a_learned_update_cannot_adapt_the_last_layer():
    with pytest.raises(HypermetaError, match="adapt_last_layer needs update: gradient"):
        fewshot_experiment(
            {
                "method": "hypermaml",
                "model": {"update": "learned", "adapt_last_layer": True},
                "eval": {"batchnorm": "transductive"},
            }
        )


def test_an_inner_steps_sweep_is_refused_for_a_learner_without_inner_steps():
    exp = fewshot_experiment(
        {"method": "hypernet_fewshot", "model": {"hidden": 8},
         "eval": {"batchnorm": "transductive", "inner_steps_sweep": [0, 1]}}
    )  # fmt: skip
    learner = build("hypernet_fewshot", IMAGES, hidden=8)
    with pytest.raises(HypermetaError) as error:
        check_regimes(learner, exp.eval, "experiments.fsl.eval")
    assert str(error.value) == (
        "experiments.fsl.eval.inner_steps_sweep is set, but HypernetFewShot has no inner "
        "steps to vary; leave it empty."
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_omniglot_small(tmp_path_factory.mktemp("omniglot"))


def test_the_inner_steps_sweep_is_evaluated_and_drawn(tmp_path, data_dir):
    torch.set_num_threads(1)
    exp = fewshot_experiment(
        {
            "method": "hypermaml",
            "model": {"hidden": 8, "code": 8, "encoder_hidden": [16], "inner_steps": 1},
            "train": {"n_way": 5, "query": 2, "meta_batch": 2, "iterations": 2,
                      "val_every": 2, "val_episodes": 2, "device": "cpu"},
            "eval": {"batchnorm": "transductive", "episodes": 10, "meta_batch": 5,
                     "settings": [{"n_way": 5, "k_shot": 1}], "inner_steps_sweep": [0, 1, 3]},
        }
    )  # fmt: skip
    engine, ctx = FewShotEngine(), stage_context(exp, data_dir, tmp_path)
    engine.train(ctx)
    metrics = engine.evaluate(ctx)
    # the configured count (1 step) is the sweep's entry for 1
    assert metrics["accuracy_5way_1shot_steps1"] == metrics["accuracy_5way_1shot"]
    assert {f"accuracy_5way_1shot_steps{n}_ci95" for n in (0, 1, 3)} <= set(metrics)
    paths = FewShotPlotter().visualize(ctx)
    assert [p.name for p in paths][3:] == [
        "generated_head.png",
        "task_codes.png",
        "inner_steps.png",
    ]
