"""Relation Network: scores in [0, 1], the MSE-on-one-hot loss by hand, the relation
module's pairs, a class as the sum of its shots, and learning omniglot_small."""

from __future__ import annotations

import pytest
import torch
from fewshot_helpers import fewshot_experiment, prepared_omniglot_small, stage_context
from torch import nn

from hypermeta.data.episodes import Episodes, EpisodeSetting
from hypermeta.engine.classification import load_trained
from hypermeta.engine.fewshot import FewShotEngine, episode_logits, split_sampler
from hypermeta.methods.relation import RelationModule, RelationNetwork, sung_init


def test_the_relation_module_scores_each_pair_of_its_depth_concatenation_in_zero_one():
    torch.manual_seed(0)
    module = RelationModule(hidden=6, side=5, units=4).double().eval()
    nn.init.normal_(module.out.weight, 0.0, 30.0)  # a steep sigmoid: scores reach towards 0
    classes, queries = torch.randn(3, 6, 5, 5).double(), torch.randn(4, 6, 5, 5).double()
    scores = module(classes, queries)
    assert scores.shape == (4, 3)
    assert scores.min() >= 0 and scores.max() <= 1 and scores.min() < 0.05
    # the module on each [class; query] concatenation, one pair at a time
    for q in range(4):
        for n in range(3):
            pair = torch.cat([classes[n], queries[q]]).unsqueeze(0)
            x = module.second(module.first(pair)).flatten(1)
            expected = torch.sigmoid(module.out(torch.relu(module.fc(x))))
            assert torch.allclose(scores[q, n], expected[0, 0])


class FixedScores(RelationNetwork):
    """Relation scores given in advance: the loss alone under test."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__(nn.Flatten(), RelationModule(1, 4, 1), clip_grad_norm=None)
        self.scores = scores

    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        return self.scores


def test_the_loss_is_mean_squared_error_against_one_hot_targets():
    scores = torch.tensor([[[0.9, 0.2], [0.4, 0.7]]])
    episodes = Episodes(torch.zeros(1, 2, 1), torch.tensor([[0, 1]]), torch.zeros(1, 2, 1),
                        torch.tensor([[0, 1]]), 2)  # fmt: skip
    loss, returned = FixedScores(scores).loss(episodes)
    # targets [[1, 0], [0, 1]]: errors 0.1, 0.2, 0.4, 0.3
    assert torch.isclose(loss, torch.tensor((0.01 + 0.04 + 0.16 + 0.09) / 4))
    assert returned is scores


class Recorder(nn.Module):
    def forward(self, classes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        self.classes = classes
        return torch.zeros(len(queries), len(classes))


def test_with_several_shots_a_class_is_the_sum_of_its_support_feature_maps():
    learner = RelationNetwork(nn.Identity(), Recorder(), clip_grad_norm=None)
    support = torch.randn(1, 6, 2, 3, 3)
    labels = torch.tensor([[1, 0, 2, 1, 0, 2]])
    episodes = Episodes(support, labels, torch.randn(1, 4, 2, 3, 3), torch.zeros(1, 4).long(), 3)
    assert learner.feature_logits(episodes).shape == (1, 4, 3)
    expected = torch.stack([support[0, labels[0] == c].sum(0) for c in range(3)])
    assert torch.allclose(learner.relation.classes, expected)


def test_gradients_are_clipped_in_the_encoder_and_the_relation_module_apart():
    encoder, relation = nn.Linear(3, 3), nn.Linear(3, 3)
    learner = RelationNetwork(encoder, relation, clip_grad_norm=0.5)
    for parameter in learner.parameters():
        parameter.grad = torch.full_like(parameter, 10.0)
    learner.before_update()
    for part in (encoder, relation):
        norm = torch.cat([p.grad.flatten() for p in part.parameters()]).norm()
        assert torch.isclose(norm, torch.tensor(0.5))


def test_sung_initialisation():
    module = RelationModule(hidden=4, side=5, units=8)
    module.apply(sung_init)
    assert torch.equal(module.fc.bias, torch.ones(8)) and torch.equal(
        module.out.bias, torch.ones(1)
    )
    assert torch.equal(module.first[0].bias, torch.zeros(4))
    assert torch.equal(module.first[1].weight, torch.ones(4))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_omniglot_small(tmp_path_factory.mktemp("omniglot"))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    torch.set_num_threads(1)
    exp = fewshot_experiment(
        {
            "method": "relation",
            "model": {"hidden": 32},
            "train": {"n_way": 5, "k_shot": 1, "query": 19, "meta_batch": 1, "lr": 0.003,
                      "iterations": 300, "val_every": 300, "val_episodes": 20, "device": "cpu"},
            "eval": {"batchnorm": "running_stats", "settings": [{"n_way": 5, "k_shot": 1}],
                     "episodes": 100},
        }
    )  # fmt: skip
    ctx = stage_context(exp, data_dir, tmp_path_factory.mktemp("relation"))
    FewShotEngine().train(ctx)
    return ctx


@pytest.mark.slow
def test_relation_network_learns_omniglot_small_five_way_one_shot(trained):
    metrics = FewShotEngine().evaluate(trained)
    assert metrics["classifier_ways"] == "any number (no fixed-size head)"
    # chance is 20%
    assert metrics["accuracy_5way_1shot"] >= 0.75, metrics


@pytest.mark.slow
def test_a_query_identical_to_a_support_example_scores_highest_on_its_class(trained):
    learner, saved = load_trained(trained.model_path)
    sampler = split_sampler(trained.data_dir, "test", saved["data_info"], torch.device("cpu"))
    setting = EpisodeSetting(n_way=5, k_shot=1, query=1)
    episodes = sampler.gather(setting, sampler.fixed_episodes(setting, 20, seed=0))
    episodes.query_x = episodes.support_x.clone()  # each query a copy of its class's shot
    scores = episode_logits(learner, episodes, "running_stats")
    assert scores.min() >= 0 and scores.max() <= 1
    # after so short a training not yet every copy (98 of 100 after 150 episodes)
    assert (scores.argmax(-1) == episodes.query_y).float().mean() >= 0.95
