"""Prototypical Networks: known answers for prototypes and logits, batch-norm modes at
meta-test, and learning omniglot_small 5-way 1-shot far above chance through the engine."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT
from fewshot_helpers import (
    assert_crash_resumes_exactly,
    fewshot_experiment,
    prepared_omniglot_small,
    stage_context,
)
from tolerance import assert_close_reordered
from torch import nn

from hypermeta.data.episodes import Episodes, EpisodeSampler, EpisodeSetting
from hypermeta.engine.fewshot import FewShotEngine, check_regimes, episode_accuracies
from hypermeta.errors import HypermetaError
from hypermeta.experiments import load_params, resolve
from hypermeta.methods import get_method
from hypermeta.methods.protonet import PrototypicalNetwork, prototypes
from hypermeta.nn.conv4 import Conv4
from hypermeta.plots.fewshot import FewShotPlotter


def test_prototypes_are_class_means_even_with_unequal_shots():
    support = torch.tensor([[0.0, 0.0], [2.0, 4.0], [10.0, 10.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 0])
    expected = torch.tensor([[1.0, 5 / 3], [10.0, 10.0]])
    assert torch.allclose(prototypes(support, labels, 2), expected)


def test_logits_are_negative_squared_distances_to_prototypes():
    learner = PrototypicalNetwork(nn.Flatten())  # identity embedding: a known answer
    episodes = Episodes(
        support_x=torch.tensor([[[0.0, 0.0]], [[2.0, 0.0]], [[0.0, 4.0]]]).unsqueeze(0),
        support_y=torch.tensor([[0, 0, 1]]),
        query_x=torch.tensor([[[1.0, 1.0]], [[0.0, 3.0]]]).unsqueeze(0),
        query_y=torch.tensor([[0, 1]]),
        n_way=2,
    )
    # prototypes (1, 0) and (0, 4)
    expected = -torch.tensor([[[1.0, 10.0], [10.0, 1.0]]])
    assert torch.allclose(learner.query_logits(episodes), expected)


def test_transductive_meta_test_uses_batch_statistics_and_leaves_running_ones():
    learner = PrototypicalNetwork(Conv4(hidden=8))
    norm = learner.encoder.features[0][1]
    norm.running_mean.fill_(0.3)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    x = torch.randn(1, 10, 1, 28, 28) * 3 + 1
    episodes = Episodes(x[:, :5], torch.arange(5)[None], x[:, 5:], torch.arange(5)[None], 5)
    with learner.meta_test("transductive"):
        transductive = learner.test_logits(episodes)
        assert not learner.training and norm.training
    with learner.meta_test("running_stats"):
        running = learner.test_logits(episodes)
        assert not norm.training
    for key, value in learner.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert norm.track_running_stats and learner.training
    assert not torch.allclose(transductive, running)
    # transductive equals training-mode batch norm over the whole episode
    learner.train()
    reference = learner.query_logits(episodes).detach()
    assert_close_reordered(transductive, reference)


def test_evaluation_encoding_each_image_once_equals_encoding_per_episode():
    torch.manual_seed(0)
    learner = PrototypicalNetwork(Conv4(hidden=8))
    learner.train()
    for _ in range(3):  # running statistics away from their initial values
        learner.encoder(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    images = torch.randint(0, 256, (12, 6, 1, 28, 28), dtype=torch.uint8)
    sampler = EpisodeSampler(images, mean=0.2, std=0.3)
    setting = EpisodeSetting(n_way=5, k_shot=2, query=3)
    index = sampler.fixed_episodes(setting, 8, seed=0)
    with learner.meta_test("transductive"):
        assert learner.image_encoder() is None  # batch statistics: per episode only
    with learner.meta_test("running_stats"):
        per_episode = learner.test_logits(sampler.gather(setting, index))
        features = sampler.encoded(learner.image_encoder())
        once = learner.feature_logits(features.gather(setting, index))
    assert_close_reordered(once, per_episode)
    expected = (per_episode.argmax(-1) == sampler.gather(setting, index).query_y).float().mean(1)
    accuracies = episode_accuracies(learner, sampler, setting, index, "running_stats", 3, amp=False)
    assert torch.equal(accuracies, expected)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_omniglot_small(tmp_path_factory.mktemp("omniglot"))


@pytest.mark.slow
def test_protonet_learns_omniglot_small_five_way_one_shot(tmp_path, data_dir):
    torch.set_num_threads(1)
    exp = fewshot_experiment(
        {
            "method": "protonet",
            "model": {"hidden": 32},
            "train": {"n_way": 20, "k_shot": 1, "query": 5, "meta_batch": 1,
                      "iterations": 100, "val_every": 50, "val_episodes": 20, "device": "cpu"},
            "eval": {"batchnorm": "running_stats", "also_batchnorm": ["transductive"],
                     "settings": [{"n_way": 5, "k_shot": 1}], "episodes": 100},
        }
    )  # fmt: skip
    engine, ctx = FewShotEngine(), stage_context(exp, data_dir, tmp_path)
    engine.train(ctx)
    history = json.loads(ctx.history_path.read_text())
    assert [row["iteration"] for row in history] == [50, 100]
    metrics = engine.evaluate(ctx)
    assert metrics["meta_test_batchnorm"] == "running_stats"  # the unsuffixed metrics' regime
    assert metrics["classifier_ways"] == "any number (no fixed-size head)"  # the report says so
    # chance is 20%; a broken pipeline or prototype rule stays near it
    assert metrics["accuracy_5way_1shot"] >= 0.75, metrics
    assert 0 < metrics["accuracy_5way_1shot_ci95"] < 0.05
    # the same episodes again, transductive: its own keys, the unsuffixed ones untouched
    assert metrics["accuracy_5way_1shot_transductive"] >= 0.75, metrics
    assert 0 < metrics["accuracy_5way_1shot_transductive_ci95"] < 0.05
    paths = FewShotPlotter().visualize(ctx)
    assert [p.name for p in paths] == ["curves.png", "episode.png", "data_split.txt"]
    split_note = paths[2].read_text()
    assert "by alphabet" in split_note and "batch norm at meta-test: running_stats" in split_note
    assert "also transductive on the same episodes (metrics ending _transductive)" in split_note


def test_an_extra_batchnorm_regime_may_not_repeat_one_already_evaluated():
    with pytest.raises(HypermetaError, match="also_batchnorm repeats a regime"):
        fewshot_experiment(
            {
                "method": "protonet",
                "eval": {"batchnorm": "transductive", "also_batchnorm": ["transductive"]},
            }
        )


def test_a_retired_regime_name_fails_validation_saying_what_replaced_it():
    for key, value in (("batchnorm", "running"), ("also_batchnorm", ["running"])):
        with pytest.raises(HypermetaError) as error:
            fewshot_experiment(
                {"method": "protonet", "eval": {"batchnorm": "transductive", key: value}}
            )
        where = "batchnorm" if key == "batchnorm" else "also_batchnorm.0"
        assert str(error.value) == (
            f"params.yaml: experiments.fsl.eval.{where}: 'running' is no longer a batch-norm "
            "regime; write running_stats for ProtoNet's running statistics, per_query for "
            "MAML, FOMAML, Meta-SGD and Reptile (the support set plus one query), or "
            "per_step_stats for MAML++'s per-step statistics (got 'running')."
        )


def test_the_engine_refuses_a_regime_the_learner_does_not_implement(tmp_path, data_dir):
    exp = fewshot_experiment(
        {"method": "protonet", "model": {"hidden": 8},
         "train": {"n_way": 5, "iterations": 1, "device": "cpu"},
         "eval": {"batchnorm": "transductive", "also_batchnorm": ["per_query"]}}
    )  # fmt: skip
    ctx = stage_context(exp, data_dir, tmp_path)
    with pytest.raises(HypermetaError) as error:
        FewShotEngine().train(ctx)
    assert str(error.value) == (
        "experiments.fsl.eval.also_batchnorm.0 is 'per_query', which PrototypicalNetwork "
        "does not support; use one of transductive, running_stats."
    )
    assert not ctx.model_dir.exists()  # refused before any training


def test_interrupted_training_resumes_exactly(tmp_path, data_dir, monkeypatch):
    torch.set_num_threads(1)
    exp = fewshot_experiment(
        {
            "method": "protonet",
            "model": {"hidden": 8},
            "train": {"n_way": 5, "query": 2, "meta_batch": 2, "iterations": 6,
                      "val_every": 3, "val_episodes": 2, "device": "cpu"},
            "eval": {"batchnorm": "running_stats"},
        }
    )  # fmt: skip
    engine = FewShotEngine()
    straight = stage_context(exp, data_dir, tmp_path / "straight")
    engine.train(straight)

    resumed = stage_context(exp, data_dir, tmp_path / "resumed")
    assert_crash_resumes_exactly(engine, straight, resumed, PrototypicalNetwork, monkeypatch)


def test_every_few_shot_experiment_names_regimes_its_learner_implements():
    """params.yaml in every profile: what the engine would otherwise refuse at train."""
    params = load_params(ROOT / "params.yaml")
    for name in params.experiments:
        for profile in params.profiles:
            exp = resolve(params, name, profile)
            if exp.kind == "fewshot":
                learner = get_method(exp.method).build(exp.model, {"image_shape": [1, 28, 28]})
                check_regimes(learner, exp.eval, f"experiments.{name}.eval")
