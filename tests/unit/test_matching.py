"""Matching Networks: cosine attention's known answers, full context embeddings' shapes
and permutation equivariance, and learning omniglot_small far above chance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fewshot_helpers import fewshot_experiment, prepared_omniglot_small, stage_context
from torch import nn

from hypermeta.data.episodes import Episodes
from hypermeta.engine.fewshot import FewShotEngine
from hypermeta.methods.matching import FullContextEmbedding, MatchingNetwork
from hypermeta.report import model_note


def feature_episodes(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int):
    query_y = torch.zeros(query.shape[:2], dtype=torch.long)  # never read by the logits
    return Episodes(support, labels, query, query_y, n_way)


def test_one_shot_prediction_is_the_nearest_support_example_by_cosine():
    torch.manual_seed(0)
    learner = MatchingNetwork(nn.Flatten())  # identity features: cosine on the inputs
    support, query = torch.randn(4, 5, 8), torch.randn(4, 30, 8)
    labels = torch.stack([torch.randperm(5) for _ in range(4)])  # one example per class
    episodes = feature_episodes(support, labels, query, 5)
    attention = learner.attention(episodes)
    assert torch.allclose(attention.sum(-1), torch.ones(4, 30))
    cosine = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)
    nearest = labels.gather(1, cosine.argmax(-1))
    assert torch.equal(learner.feature_logits(episodes).argmax(-1), nearest)


def test_the_loss_is_the_negative_log_likelihood_of_the_attention_weighted_labels():
    torch.manual_seed(1)
    learner = MatchingNetwork(nn.Flatten(), cosine_scale=3.0)
    support, query = torch.randn(1, 6, 4), torch.randn(1, 4, 4)
    labels, query_y = torch.tensor([[0, 1, 2, 0, 1, 2]]), torch.tensor([[0, 1, 2, 1]])
    episodes = Episodes(support, labels, query, query_y, 3)
    cosine = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)
    attention = (3.0 * cosine).softmax(-1)[0]  # (4, 6)
    # a query's probability of class c: its attention on class c's support examples
    likelihood = torch.stack([attention[q, labels[0] == query_y[0, q]].sum() for q in range(4)])
    loss, _ = learner.loss(episodes)
    assert torch.allclose(loss, -likelihood.log().mean())


def test_full_context_embeddings_keep_shapes_and_are_permutation_equivariant():
    torch.manual_seed(2)
    fce = FullContextEmbedding(size=8, steps=3)
    learner = MatchingNetwork(nn.Flatten(), fce)
    support, query = torch.randn(2, 10, 8), torch.randn(2, 7, 8)
    labels = torch.arange(5).repeat_interleave(2).repeat(2, 1)
    context = fce.support(support, labels)
    assert context.shape == support.shape
    assert fce.queries(query, context).shape == query.shape
    assert not torch.allclose(context, support)  # the context changed the embeddings

    permutation = torch.randperm(10)
    shuffled = fce.support(support[:, permutation], labels[:, permutation])
    assert torch.allclose(shuffled, context[:, permutation], atol=1e-6)
    logits = learner.feature_logits(feature_episodes(support, labels, query, 5))
    permuted = feature_episodes(support[:, permutation], labels[:, permutation], query, 5)
    assert torch.allclose(learner.feature_logits(permuted), logits, atol=1e-6)


def test_the_report_says_whether_full_context_embeddings_were_used():
    plain = fewshot_experiment({"method": "matching", "eval": {"batchnorm": "running_stats"}})
    assert "no full context embeddings" in model_note(plain)
    fce = fewshot_experiment(
        {"method": "matching", "model": {"fce": True}, "eval": {"batchnorm": "running_stats"}}
    )
    assert model_note(fce).startswith("Embeddings: full context")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_omniglot_small(tmp_path_factory.mktemp("omniglot"))


@pytest.mark.slow
@pytest.mark.parametrize("fce", [False, True], ids=["plain", "fce"])
def test_matching_networks_learn_omniglot_small_five_way_one_shot(tmp_path, data_dir, fce):
    torch.set_num_threads(1)
    exp = fewshot_experiment(
        {
            "method": "matching",
            "model": {"hidden": 32, "fce": fce, "cosine_scale": 10.0},
            "train": {"n_way": 20, "k_shot": 1, "query": 5, "meta_batch": 1,
                      "iterations": 100, "val_every": 100, "val_episodes": 20, "device": "cpu"},
            "eval": {"batchnorm": "running_stats", "settings": [{"n_way": 5, "k_shot": 1}],
                     "episodes": 100},
        }
    )  # fmt: skip
    engine, ctx = FewShotEngine(), stage_context(exp, data_dir, tmp_path)
    engine.train(ctx)
    metrics = engine.evaluate(ctx)
    # chance is 20%
    assert metrics["accuracy_5way_1shot"] >= 0.75, metrics
