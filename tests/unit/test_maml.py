"""MAML and FOMAML: meta-gradients against independent references; every gradient
learner (MAML, FOMAML, MAML++, Meta-SGD, Reptile) learning toy tasks, and meta-testing
per query; the sine regression engine."""

from __future__ import annotations

import pytest
import torch
from maml_helpers import (
    IMAGES,
    REGRESSION,
    build,
    flat_grad,
    others_changed,
    prototype_episodes,
    sine_like_episodes,
)
from tolerance import assert_close_reordered
from torch import nn
from unit.helpers import same_trained_weights, untimed

from hypermeta.atomic import write_json
from hypermeta.config import SplitConfig
from hypermeta.data.episodes import Episodes
from hypermeta.data.prepare import prepare
from hypermeta.engine import StageContext, get_engine
from hypermeta.errors import HypermetaError
from hypermeta.nn.batch_stat_norm import BatchStatNorm
from hypermeta.plots import get_plotter
from hypermeta.tracking import NullTracker

torch.set_num_threads(1)


@pytest.mark.parametrize("vectorize", [True, False])
def test_maml_meta_gradient_matches_central_finite_differences(vectorize):
    """Second order, float64, on a tiny Conv-4 with batch norm (whose native kernel has a
    wrong second derivative under vmap: the reason for BatchStatNorm)."""
    torch.manual_seed(0)
    model = (
        build(
            "maml",
            IMAGES,
            n_way=3,
            width=3,
            inner_steps=2,
            inner_lr=0.3,
            vectorize=vectorize,
        )
        .double()
        .train()
    )
    episodes = prototype_episodes(torch.Generator().manual_seed(1), 3, 3, 2, 2)
    episodes = Episodes(
        episodes.support_x.double(),
        episodes.support_y,
        episodes.query_x.double(),
        episodes.query_y,
        3,
    )
    analytic = flat_grad(model, model.loss(episodes)[0])
    params = list(model.parameters())
    eps = 1e-5
    for seed in range(3):
        direction = torch.randn(analytic.shape, generator=torch.Generator().manual_seed(seed))
        direction = direction.double() / direction.norm()
        chunks = direction.split([p.numel() for p in params])

        def loss_at(sign: float, chunks=chunks) -> float:
            with torch.no_grad():
                for p, d in zip(params, chunks, strict=True):
                    p.add_(sign * eps * d.view_as(p))
                value = model.loss(episodes)[0].item()
                for p, d in zip(params, chunks, strict=True):
                    p.sub_(sign * eps * d.view_as(p))
            return value

        numeric = (loss_at(1.0) - loss_at(-1.0)) / (2 * eps)
        assert numeric == pytest.approx((analytic @ direction).item(), rel=1e-6, abs=1e-9)


def test_maml_and_fomaml_against_the_one_step_meta_gradient_formula():
    """One inner step θ' = θ − α∇L_s(θ): MAML's meta-gradient is (I − α∇²L_s(θ)) ∇L_q(θ'),
    FOMAML's drops the Jacobian: ∇L_q(θ'). Reference built with plain autograd."""
    alpha = 0.05
    torch.manual_seed(0)
    maml = build("maml_regression", REGRESSION, mlp_hidden=[8, 8], inner_steps=1, inner_lr=alpha)
    maml = maml.double().train()
    fomaml = build(
        "fomaml_regression", REGRESSION, mlp_hidden=[8, 8], inner_steps=1, inner_lr=alpha
    )
    fomaml = fomaml.double().train()
    fomaml.load_state_dict(maml.state_dict())
    episodes = sine_like_episodes(torch.Generator().manual_seed(3))

    params = list(maml.target.parameters())
    names = [n for n, _ in maml.target.named_parameters()]

    def loss(weights, x, y):
        out = torch.func.functional_call(maml.target, dict(zip(names, weights, strict=True)), x)
        return nn.functional.mse_loss(out, y)

    expected_maml, expected_fomaml = [], []
    for task in range(3):
        sx, sy = episodes.support_x[task], episodes.support_y[task]
        qx, qy = episodes.query_x[task], episodes.query_y[task]
        support_grad = torch.autograd.grad(loss(params, sx, sy), params, create_graph=True)
        adapted = [
            (p - alpha * g).detach().requires_grad_()
            for p, g in zip(params, support_grad, strict=True)
        ]
        query_grad = torch.autograd.grad(loss(adapted, qx, qy), adapted)
        hessian_times_query_grad = torch.autograd.grad(support_grad, params, query_grad)
        expected_fomaml.append(torch.cat([g.flatten() for g in query_grad]))
        expected_maml.append(
            torch.cat(
                [
                    (g - alpha * h).flatten()
                    for g, h in zip(query_grad, hessian_times_query_grad, strict=True)
                ]
            )
        )
    expected_maml = torch.stack(expected_maml).mean(0)
    expected_fomaml = torch.stack(expected_fomaml).mean(0)

    maml_grad = flat_grad(maml, maml.loss(episodes)[0])
    fomaml_grad = flat_grad(fomaml, fomaml.loss(episodes)[0])
    assert_close_reordered(maml_grad, expected_maml)
    assert_close_reordered(fomaml_grad, expected_fomaml)
    # the dropped second-order term is not negligible here, so the two really differ
    assert (maml_grad - fomaml_grad).norm() > 1e-3 * maml_grad.norm()


@pytest.mark.parametrize("name", ["maml", "mamlpp"])
def test_per_query_meta_test_keeps_queries_independent_and_transductive_does_not(name):
    model = build(name, IMAGES, n_way=3, width=4)
    assert any(isinstance(m, BatchStatNorm) for m in model.modules())
    episodes = prototype_episodes(torch.Generator().manual_seed(0), 2, 3, 1, 2)
    changed = others_changed(episodes)
    with torch.no_grad(), model.meta_test("per_query"):
        first = model.query_logits(episodes)[:, 0]
        assert_close_reordered(model.query_logits(changed)[:, 0], first)
    with torch.no_grad(), model.meta_test("transductive"):
        assert not torch.allclose(model.query_logits(changed)[:, 0], first, atol=1e-3)
    assert model.training and model.batchnorm == "transductive"  # modes restored


@pytest.mark.parametrize("regime", ["running_stats", "running"])
def test_a_regime_the_learner_does_not_implement_is_one_clear_sentence(regime):
    model = build("maml", IMAGES, n_way=3, width=4)
    expected = "use one of transductive, per_query" if regime != "running" else "write running"
    with pytest.raises(HypermetaError, match=expected), model.meta_test(regime):
        pass


def test_fewer_ways_use_the_first_head_columns_and_more_is_one_clear_error():
    model = build("maml", IMAGES, n_way=3, width=4)
    assert model.max_way == 3
    two_way = prototype_episodes(torch.Generator().manual_seed(0), 2, 2, 1, 2)
    assert model.query_logits(two_way).shape == (2, 4, 2)
    four_way = prototype_episodes(torch.Generator().manual_seed(0), 1, 4, 1, 1)
    with pytest.raises(HypermetaError, match="at most 3 classes"):
        model.query_logits(four_way)


@pytest.mark.parametrize(
    ("name", "outer"),
    [
        ("maml", ("adam", 0.003)),
        ("fomaml", ("adam", 0.003)),
        ("metasgd", ("adam", 0.003)),
        ("mamlpp", ("adam", 0.003)),
        ("reptile", ("sgd", 0.5)),  # Reptile's outer step is plain SGD with a large ε
    ],
)
@pytest.mark.slow
def test_each_learner_learns_a_few_shot_task_far_above_chance(name, outer):
    """5-way 1-shot on fresh random classes (chance 20%) after 50 meta-iterations of 4
    tasks; a broken update stays near chance."""
    iterations = 50
    torch.manual_seed(0)
    model = build(name, IMAGES, n_way=5, width=8, inner_steps=2, inner_lr=0.4)
    kind, lr = outer
    optimizer = (torch.optim.Adam if kind == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    for iteration in range(iterations):
        model.train()
        model.on_iteration(iteration, iterations)
        model.meta_step(prototype_episodes(generator, 4, 5, 1, 3), optimizer)
    test = prototype_episodes(torch.Generator().manual_seed(99), 40, 5, 1, 3)
    model.eval()
    with torch.no_grad():
        accuracy = (model.query_logits(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy >= 0.6


def sine_context(tmp_path, method: str, **train) -> StageContext:
    from hypermeta.config import Params
    from hypermeta.experiments import resolve

    params = Params.model_validate(
        {
            "profile": "quick",
            "profiles": {"quick": "test"},
            "data": {"datasets": {"quick": ["sine"]}},
            "experiments": {
                "sine": {
                    "method": method,
                    "dataset": "sine",
                    "model": {"inner_steps": 1, "inner_lr": 0.01},
                    "train": {
                        "meta_iterations": 400,
                        "outer_lr": 0.005,
                        "log_every": 200,
                        "checkpoint_every": 200,
                        "device": "cpu",
                        **train,
                    },
                    "eval": {"n_tasks": 200, "steps": [0, 1, 10]},
                }
            },
        }
    )
    prepare("sine", tmp_path / "raw", tmp_path / "prepared", SplitConfig())
    return StageContext(
        experiment=resolve(params, "sine"),
        data_dir=tmp_path / "prepared" / "sine",
        model_dir=tmp_path / "models",
        metrics_dir=tmp_path / "metrics",
        plots_dir=tmp_path / "plots",
        tracker=NullTracker(),
    )


@pytest.mark.slow
def test_sine_maml_beats_the_pretrained_baseline_after_one_step(tmp_path):
    ctx = sine_context(tmp_path, "maml_regression")
    engine = get_engine("regression")
    engine.train(ctx)
    metrics = engine.evaluate(ctx)
    assert metrics["mse_k10"] == pytest.approx(metrics["mse_k10_step1"], rel=1e-5)
    assert metrics["mse_k10_step1"] < 0.8 * metrics["baseline_mse_k10_step1"]
    assert metrics["mse_k5_step1"] < 0.8 * metrics["baseline_mse_k5_step1"]
    assert metrics["mse_k10_ci95"] > 0
    paths = get_plotter("regression").visualize(ctx)
    assert {p.name for p in paths} == {"curves.png", "adaptation_k5.png", "adaptation_k10.png"}
    write_json(ctx.metrics_dir / "metrics.json", metrics)  # what the evaluate stage writes
    compared = get_plotter("regression").compare([ctx], tmp_path / "report", "sine")
    assert [p.name for p in compared] == ["sine_mse_by_steps.png"] and compared[0].exists()


def test_sine_training_resumes_exactly_after_an_interruption(tmp_path, monkeypatch):
    import hypermeta.engine.regression as regression

    # a checkpoint between rows: the resumed row's averages include iterations before it
    schedule = {"meta_iterations": 30, "log_every": 15, "checkpoint_every": 10}
    engine = get_engine("regression")
    straight = sine_context(tmp_path / "straight", "metasgd_regression", **schedule)
    engine.train(straight)

    resumed = sine_context(tmp_path / "resumed", "metasgd_regression", **schedule)
    real_sample, calls = regression.sample_episodes, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 25:  # after the checkpoint at iteration 20
            raise KeyboardInterrupt
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(regression, "sample_episodes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.train(resumed)
    monkeypatch.setattr(regression, "sample_episodes", real_sample)
    engine.train(resumed)

    expected, got = same_trained_weights(straight.model_path, resumed.model_path)
    assert [r["iteration"] for r in got["history"]] == [15, 30]
    assert untimed(got["history"]) == untimed(expected["history"])
