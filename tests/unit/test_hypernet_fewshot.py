"""The support-set hypernetworks (hypernet_fewshot, hyperproto, hypermaml; shared parts in
hyper/task_encoder.py): generated shapes, gradient flow, permutation invariance, any
number of ways, learning a few-shot task far above chance, exact resume."""

from __future__ import annotations

import pytest
import torch
from fewshot_helpers import (
    assert_crash_resumes_exactly,
    fewshot_experiment,
    prepared_omniglot_small,
    stage_context,
)
from maml_helpers import IMAGES, build, prototype_episodes
from tolerance import assert_close_reordered

from hypermeta.data.episodes import EpisodeIndex, Episodes, EpisodeSampler, EpisodeSetting
from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.engine.fewshot import FewShotEngine
from hypermeta.hyper import GeneratedModel, effective_parameters, effective_size, target_shapes
from hypermeta.hyper.task_encoder import GeneratedHead, TaskCode, TaskEncoder, TaskHypernet
from hypermeta.methods.fewshot_base import FewShotLearner
from hypermeta.plots.fewshot import FewShotPlotter, episode_alphabets

# (method, model section): each learner, and the options that change its network.
LEARNERS = {
    "hypernet_fewshot": ("hypernet_fewshot", {"hidden": 8, "code": 8, "encoder_hidden": [16]}),
    "hypernet_fewshot-kernel-block-residual": (
        "hypernet_fewshot",
        {
            "hidden": 8,
            "code": 8,
            "encoder_hidden": [16],
            "pooling": "kernel",
            "generate_block": True,
            "residual": True,
        },
    ),  # fmt: skip
    "hyperproto": ("hyperproto", {"hidden": 8, "code": 8, "encoder_hidden": [16]}),
    "hyperproto-residual": (
        "hyperproto",
        {"hidden": 8, "code": 8, "encoder_hidden": [16], "residual": True},
    ),
    "hypermaml": (
        "hypermaml",
        {
            "hidden": 8,
            "code": 8,
            "encoder_hidden": [16],
            "inner_steps": 2,
            "inner_lr": 0.5,
            "adapt_last_layer": True,
        },
    ),  # fmt: skip
    "hypermaml-learned": (
        "hypermaml",
        {
            "hidden": 8,
            "code": 8,
            "encoder_hidden": [16],
            "inner_steps": 2,
            "update": "learned",
            "pooling": "kernel",
        },
    ),  # fmt: skip
}


def learner(key: str) -> FewShotLearner:
    torch.manual_seed(0)
    method, model = LEARNERS[key]
    return build(method, IMAGES, **model)


def episodes(tasks: int = 2, n_way: int = 5, k_shot: int = 2, query: int = 3) -> Episodes:
    return prototype_episodes(torch.Generator().manual_seed(1), tasks, n_way, k_shot, query)


def test_generated_tensors_have_the_target_shapes_for_any_number_of_ways():
    target = torch.nn.Conv2d(4, 6, 3)
    shapes = target_shapes(target)
    generator = TaskHypernet(shapes, code=5)
    code = TaskCode(classes=torch.randn(7, 5), task=torch.randn(5))
    assert {n: w.shape for n, w in generator(code).items()} == shapes
    head = GeneratedHead(features=10, code=5)
    for n_way in (2, 7):
        code = TaskCode(torch.randn(n_way, 5), torch.randn(5))
        rows = head.model.generator(code)
        assert {n: w.shape for n, w in rows.items()} == {
            n: head.model.generator.shape(n, n_way) for n in ("weight", "bias")
        }
        assert rows["weight"].shape == (n_way, 10) and rows["bias"].shape == (n_way,)
        weights = head.weights(code.classes, torch.randn(n_way, 10))
        assert head(torch.randn(3, 10), weights).shape == (3, n_way)


def test_a_residual_generated_model_adds_the_generated_tensors_to_its_own():
    target = torch.nn.Linear(3, 2)
    generator = TaskHypernet(target_shapes(target), code=4)
    model = GeneratedModel(target, generator, residual=True)
    code = TaskCode(torch.randn(1, 4), torch.randn(4))
    x = torch.randn(5, 3)
    delta = generator(code)
    expected = x @ (target.weight + delta["weight"]).T + target.bias + delta["bias"]
    assert_close_reordered(model(x, condition=code), expected)
    weights = effective_parameters(model, code)
    assert_close_reordered(weights["weight"], (target.weight + delta["weight"]).detach())
    assert effective_size(model) == 8  # the base and the generated are the same 8 weights


@pytest.mark.parametrize("key", LEARNERS)
def test_gradients_reach_hypernetwork_task_encoder_and_encoder(key):
    model = learner(key)
    model.train()
    loss, _ = model.loss(episodes())
    loss.backward()
    groups = {"encoder": [], "task encoder": [], "hypernetwork": []}
    for name, param in model.named_parameters():
        if "task_encoder" in name:
            groups["task encoder"].append(param)
        elif "generator" in name or "learned_update" in name:
            groups["hypernetwork"].append(param)
        else:
            groups["encoder"].append(param)
    for group, params in groups.items():
        assert params, f"{key} has no {group}"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), group


def shuffled(batch: Episodes, order: torch.Tensor) -> Episodes:
    return Episodes(
        batch.support_x[:, order], batch.support_y[:, order], batch.query_x, batch.query_y,
        batch.n_way,
    )  # fmt: skip


def relabelled(batch: Episodes, permutation: torch.Tensor) -> Episodes:
    return Episodes(
        batch.support_x, permutation[batch.support_y], batch.query_x, permutation[batch.query_y],
        batch.n_way,
    )  # fmt: skip


@pytest.mark.parametrize("regime", ["running_stats", "transductive"])
@pytest.mark.parametrize("key", LEARNERS)
def test_shuffling_the_support_set_leaves_query_logits_and_relabelling_permutes_them(key, regime):
    model = learner(key)
    batch = episodes(k_shot=3)
    with model.meta_test(regime):
        logits = model.test_logits(batch)
        # across classes and within them, labels going along with their images
        order = torch.randperm(batch.support_x.shape[1], generator=torch.Generator().manual_seed(3))
        assert_close_reordered(model.test_logits(shuffled(batch, order)), logits)
        permutation = torch.tensor([3, 0, 4, 1, 2])
        # class k is now called permutation[k]: its column moves there
        moved = torch.empty_like(logits)
        moved[..., permutation] = logits
        assert_close_reordered(model.test_logits(relabelled(batch, permutation)), moved)


@pytest.mark.parametrize("key", LEARNERS)
def test_generated_heads_take_any_number_of_ways(key):
    model = learner(key)
    assert model.max_way is None
    with model.meta_test("running_stats"):
        for n_way in (2, 9):
            batch = episodes(n_way=n_way)
            assert model.test_logits(batch).shape == (2, 3 * n_way, n_way)
            head = model.generated_head(batch)
            assert head is None or head.shape == (2, n_way, 8)
            assert model.task_codes(batch).shape == (2, 8)


def test_the_figure_hooks_say_what_each_learner_generates():
    batch = episodes()
    with torch.no_grad():
        assert learner("hypernet_fewshot").generated_filters(batch) is None
        filters = learner("hypernet_fewshot-kernel-block-residual").generated_filters(batch)
        assert filters.shape == (2, 8, 8, 3, 3)
        # a generated kernel differs from task to task
        assert not torch.allclose(filters[0], filters[1])
        assert learner("hyperproto").generated_head(batch) is None
        assert learner("hyperproto").generated_filters(batch).shape == (2, 8, 8, 3, 3)
    assert learner("hypernet_fewshot").with_inner_steps(1) is None


def test_kernel_pooling_sees_how_the_classes_resemble_each_other():
    encoder = TaskEncoder(features=2, code=3, hidden=[4], pooling="kernel")
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # class 0's context: cosine row (1, 0, 1/√2) applied to the means, over 3 classes
    expected = (means[0] + means[2] / 2**0.5) / 3
    assert torch.allclose(encoder.context(means)[0], expected)


# A head generated from scratch learns slower than one on ProtoNet's base: wider codes,
# a larger step and more iterations.
LEARNING = {
    "hypernet_fewshot": ({"code": 32, "encoder_hidden": [32]}, 0.01, 100),
    "hypernet_fewshot-kernel-block-residual": ({}, 0.003, 50),
    "hyperproto": ({}, 0.003, 50),
    "hypermaml": ({"adapt_last_layer": False}, 0.01, 100),
    "hypermaml-learned": ({"code": 32, "encoder_hidden": [32]}, 0.01, 100),
}


@pytest.mark.parametrize("key", LEARNING)
@pytest.mark.slow
def test_each_learner_learns_a_few_shot_task_far_above_chance(key):
    """5-way 1-shot on fresh random classes (chance 20%) after a few dozen meta-iterations
    of 4 tasks; a broken generator or task encoder stays near chance."""
    wider, lr, iterations = LEARNING[key]
    method, model = LEARNERS[key]
    torch.manual_seed(0)
    model = build(method, IMAGES, **(model | wider))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(iterations):
        model.train()
        model.meta_step(prototype_episodes(generator, 4, 5, 1, 3), optimizer)
    test = prototype_episodes(torch.Generator().manual_seed(99), 40, 5, 1, 3)
    with model.meta_test("running_stats"):
        logits = model.test_logits(test)
    assert (logits.argmax(-1) == test.query_y).float().mean().item() >= 0.6


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_omniglot_small(tmp_path_factory.mktemp("omniglot"))


@pytest.mark.parametrize("key", ["hypernet_fewshot-kernel-block-residual", "hyperproto"])
def test_interrupted_training_resumes_exactly(key, tmp_path, data_dir, monkeypatch):
    torch.set_num_threads(1)
    method, model = LEARNERS[key]
    exp = fewshot_experiment(
        {
            "method": method,
            "model": model,
            "train": {"n_way": 5, "query": 2, "meta_batch": 2, "iterations": 6,
                      "val_every": 3, "val_episodes": 2, "device": "cpu"},
            "eval": {"batchnorm": "running_stats"},
        }
    )  # fmt: skip
    engine = FewShotEngine()
    straight = stage_context(exp, data_dir, tmp_path / "straight")
    engine.train(straight)

    resumed = stage_context(exp, data_dir, tmp_path / "resumed")
    assert_crash_resumes_exactly(engine, straight, resumed, FewShotLearner, monkeypatch)


@pytest.mark.parametrize(
    ("key", "figures"),
    [
        ("hypernet_fewshot", ["generated_head.png", "task_codes.png"]),
        ("hyperproto", ["generated_filters.png", "task_codes.png"]),
    ],
)
def test_visualize_draws_what_the_learner_generates(key, figures, tmp_path, data_dir):
    torch.set_num_threads(1)
    method, model = LEARNERS[key]
    exp = fewshot_experiment(
        {
            "method": method,
            "model": model,
            "train": {"n_way": 5, "query": 2, "meta_batch": 2, "iterations": 2,
                      "val_every": 2, "val_episodes": 2, "device": "cpu"},
            "eval": {"batchnorm": "transductive", "episodes": 12, "meta_batch": 5,
                     "settings": [{"n_way": 5, "k_shot": 1}, {"n_way": 12, "k_shot": 1}]},
        }
    )  # fmt: skip
    engine, ctx = FewShotEngine(), stage_context(exp, data_dir, tmp_path)
    engine.train(ctx)
    metrics = engine.evaluate(ctx)
    assert {"accuracy_5way_1shot", "accuracy_12way_1shot"} <= set(metrics)  # any ways
    paths = FewShotPlotter().visualize(ctx)
    assert [p.name for p in paths] == ["curves.png", "episode.png", "data_split.txt", *figures]
    assert all(p.stat().st_size > 0 for p in paths)


def test_an_episode_is_coloured_by_the_alphabet_most_of_its_classes_come_from(data_dir):
    manifest = load_manifest(data_dir)
    characters = load_split(data_dir, "test")["character"].tolist()
    alphabet = [manifest["characters"][c].split("/")[0] for c in characters]
    names = list(dict.fromkeys(alphabet))  # in class order
    one, two = ([c for c, a in enumerate(alphabet) if a == name] for name in names[:2])
    classes = torch.tensor(
        [
            [two[0], one[0], one[1], one[2]],  # three of four from the first alphabet
            [one[0], one[1], one[2], one[3]],  # all from one
            [two[0], one[0], two[1], one[1]],  # a tie: its first class's alphabet
        ]
    )
    index = EpisodeIndex(classes, torch.zeros(3, 4, 2, dtype=torch.long))
    majority, pure = episode_alphabets(data_dir, manifest, index)
    assert majority == [names[0], names[0], names[1]]
    assert pure == 1


@pytest.mark.parametrize("key", ["hypernet_fewshot", "hypermaml-learned", "hyperproto"])
def test_encoding_each_test_image_once_equals_encoding_per_episode(key):
    model = learner(key)
    model.train()
    for _ in range(3):  # running statistics away from their initial values
        model.query_logits(episodes())
    images = torch.randint(0, 256, (12, 6, 1, 16, 16), dtype=torch.uint8)
    sampler = EpisodeSampler(images, mean=0.2, std=0.3)
    setting = EpisodeSetting(n_way=5, k_shot=2, query=3)
    index = sampler.fixed_episodes(setting, 4, seed=0)
    with model.meta_test("transductive"):
        assert model.image_encoder() is None  # batch statistics: per episode only
    with model.meta_test("running_stats"):
        per_episode = model.test_logits(sampler.gather(setting, index))
        encoder = model.image_encoder()
        if key == "hyperproto":  # its last block depends on the task: no per-image features
            assert encoder is None
            return
        with torch.no_grad():
            once = model.feature_logits(sampler.encoded(encoder).gather(setting, index))
    assert_close_reordered(once, per_episode)
