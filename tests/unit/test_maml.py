"""Gradient-based meta-learners (MAML, FOMAML, MAML++, Meta-SGD, Reptile) and the sine
regression engine: meta-gradients against independent references, learning on toy tasks."""

from __future__ import annotations

import copy

import pytest
import torch
from tolerance import assert_close_reordered
from torch import nn
from unit.helpers import untimed

from hypermeta.atomic import write_json
from hypermeta.config import SplitConfig, validate_section
from hypermeta.data.prepare import prepare
from hypermeta.engine import StageContext, get_engine
from hypermeta.errors import HypermetaError
from hypermeta.methods import get_method
from hypermeta.methods.fewshot_base import Episodes
from hypermeta.nn.batch_stat_norm import BatchStatNorm
from hypermeta.plots import get_plotter
from hypermeta.tracking import NullTracker

torch.set_num_threads(1)
REGRESSION = {"task": "regression", "input_dim": 1, "output_dim": 1}


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


def sine_like_episodes(generator: torch.Generator, tasks: int = 3) -> Episodes:
    x = torch.rand(tasks, 6, 1, generator=generator, dtype=torch.float64) * 10 - 5
    amplitude = torch.rand(tasks, 1, 1, generator=generator, dtype=torch.float64) * 4 + 1
    y = amplitude * torch.sin(x)
    return Episodes(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:], n_way=0)


def flat_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("vectorize", [True, False])
def test_maml_meta_gradient_matches_central_finite_differences(vectorize):
    """Second order, float64, on a tiny Conv-4 with batch norm (whose native kernel has a
    wrong second derivative under vmap: the reason for BatchStatNorm)."""
    torch.manual_seed(0)
    model = (
        build(
            "maml",
            {"image_shape": [1, 16, 16]},
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


def test_vmapped_and_per_task_inner_loops_agree():
    """Logits and MAML++'s per-step running statistics, tracked from the same start."""
    model = build(
        "mamlpp", {"image_shape": [1, 16, 16]}, n_way=3, width=4, inner_steps=2, vectorize=True
    )
    episodes = prototype_episodes(torch.Generator().manual_seed(0), 3, 3, 1, 2)
    initial = copy.deepcopy(model.state_dict())
    model.train()
    vectorized = model.query_logits(episodes)
    vectorized_statistics = copy.deepcopy(model.running_statistics.state_dict())
    model.load_state_dict(initial)
    model.config = model.config.model_copy(update={"vectorize": False})
    looped = model.query_logits(episodes)
    assert_close_reordered(vectorized, looped)
    for name, value in model.running_statistics.state_dict().items():
        assert_close_reordered(vectorized_statistics[name], value)
        assert not torch.equal(value, initial[f"running_statistics.{name}"]), name


def test_chunked_meta_step_takes_the_same_step_as_the_whole_batch():
    episodes = prototype_episodes(torch.Generator().manual_seed(0), 4, 3, 1, 2)
    updated = []
    for chunk in (None, 1, 3):
        torch.manual_seed(0)
        model = build("maml", {"image_shape": [1, 16, 16]}, n_way=3, width=4, task_chunk=chunk)
        model.meta_step(episodes, torch.optim.SGD(model.parameters(), lr=1.0))
        updated.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert_close_reordered(updated[1], updated[0])
    assert_close_reordered(updated[2], updated[0])


@pytest.mark.parametrize("name", ["maml", "metasgd", "reptile"])
def test_task_workers_take_the_loops_step_and_give_its_predictions(name):
    """Tasks on 2 or 3 threads (5 tasks: uneven runs) step and predict as one loop does."""
    episodes = prototype_episodes(torch.Generator().manual_seed(0), 5, 3, 1, 2)
    updated, predicted = [], []
    for workers in (1, 2, 3):
        torch.manual_seed(0)
        model = build(name, {"image_shape": [1, 16, 16]}, n_way=3, width=4, task_workers=workers)
        assert [len(part) for part in model.task_parts(5)] == {1: [5], 2: [2, 3], 3: [2, 1, 2]}[
            workers
        ]
        model.meta_step(episodes, torch.optim.SGD(model.parameters(), lr=1.0))
        updated.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        with model.meta_test("running"):
            predicted.append(model.test_logits(episodes))
        assert torch.get_num_threads() == 1  # the caller's intra-op threads are restored
    for workers in (1, 2):
        assert_close_reordered(updated[workers], updated[0])
        assert_close_reordered(predicted[workers], predicted[0])
    with torch.no_grad():  # the caller's grad mode reaches the worker threads
        assert (
            model.in_task_workers(lambda _: torch.is_grad_enabled(), [range(2)] * 3) == [False] * 3
        )


def test_non_transductive_meta_test_keeps_queries_independent_and_transductive_does_not():
    model = build("maml", {"image_shape": [1, 16, 16]}, n_way=3, width=4)
    assert any(isinstance(m, BatchStatNorm) for m in model.modules())
    episodes = prototype_episodes(torch.Generator().manual_seed(0), 2, 3, 1, 2)
    others_changed = episodes.query_x.clone()
    others_changed[:, 1:] = torch.randn_like(others_changed[:, 1:]) * 3
    changed = Episodes(episodes.support_x, episodes.support_y, others_changed, episodes.query_y, 3)
    with torch.no_grad(), model.meta_test("running"):
        first = model.query_logits(episodes)[:, 0]
        assert_close_reordered(model.query_logits(changed)[:, 0], first)
    with torch.no_grad(), model.meta_test("transductive"):
        assert not torch.allclose(model.query_logits(changed)[:, 0], first, atol=1e-3)
    assert model.training and model.transductive  # modes restored


def test_fewer_ways_use_the_first_head_columns_and_more_is_one_clear_error():
    model = build("maml", {"image_shape": [1, 16, 16]}, n_way=3, width=4)
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
def test_each_learner_learns_a_few_shot_task_far_above_chance(name, outer):
    """5-way 1-shot on fresh random classes (chance 20%) after 50 meta-iterations of 4
    tasks; a broken update stays near chance."""
    iterations = 50
    torch.manual_seed(0)
    model = build(name, {"image_shape": [1, 16, 16]}, n_way=5, width=8, inner_steps=2, inner_lr=0.4)
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
        "mamlpp", {"image_shape": [1, 16, 16]}, n_way=3, width=4, inner_steps=3,
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


def test_mamlpp_running_meta_test_normalises_queries_with_the_last_steps_statistics():
    """Queries after 2 steps use row 1; the support set keeps its own batch statistics,
    so row 0 (its step's) plays no part; transductive uses none of them."""
    torch.manual_seed(0)
    model = build("mamlpp", {"image_shape": [1, 16, 16]}, n_way=3, width=4, inner_steps=2)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(3):
        model.meta_step(prototype_episodes(generator, 3, 3, 1, 2), optimizer)
    episodes = prototype_episodes(generator, 2, 3, 1, 2)
    others_changed = episodes.query_x.clone()
    others_changed[:, 1:] = torch.randn_like(others_changed[:, 1:]) * 3
    changed = Episodes(episodes.support_x, episodes.support_y, others_changed, episodes.query_y, 3)
    with model.meta_test("running"):
        running = model.test_logits(episodes)
        # each query on its own: the other queries do not move its answer
        assert_close_reordered(model.test_logits(changed)[:, 0], running[:, 0])
    with model.meta_test("transductive"):
        transductive = model.test_logits(episodes)
    assert not torch.allclose(running, transductive, atol=1e-3)
    with torch.no_grad():
        model.running_statistics[0].var[0].mul_(4)
    with model.meta_test("running"):
        torch.testing.assert_close(model.test_logits(episodes), running)
    with torch.no_grad():
        model.running_statistics[0].var[1].mul_(4)
    with model.meta_test("running"):
        assert not torch.allclose(model.test_logits(episodes), running, atol=1e-3)
    with model.meta_test("transductive"):
        torch.testing.assert_close(model.test_logits(episodes), transductive)


def sine_context(tmp_path, method: str, **train) -> StageContext:
    from hypermeta.config import Params, resolve

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

    expected = torch.load(straight.model_path, weights_only=True)
    got = torch.load(resumed.model_path, weights_only=True)
    for name, value in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][name], value, rtol=0, atol=0)
    assert [r["iteration"] for r in got["history"]] == [15, 30]
    assert untimed(got["history"]) == untimed(expected["history"])
