"""Siamese networks (Koch et al. 2015): a symmetric similarity highest at distance zero,
seeded distortions that keep images in range, pairs within the episode, and learning
omniglot_small far above chance through the engine."""

from __future__ import annotations

import json

import pytest
import torch
from fewshot_helpers import (
    assert_crash_resumes_exactly,
    fewshot_experiment,
    prepared_omniglot_small,
    stage_context,
)

from hypermeta.data.episodes import Episodes, EpisodeSampler, EpisodeSetting, seeded_generator
from hypermeta.engine.fewshot import FewShotEngine
from hypermeta.methods.siamese import (
    SiameseConfig,
    SiameseNetwork,
    build,
    koch_distortions,
    verification_pairs,
)

MEAN, STD = 0.08, 0.25  # about omniglot's pixel statistics
BACKGROUND, INK = -MEAN / STD, (1 - MEAN) / STD  # a normalised image's range


def small_siamese(**config) -> SiameseNetwork:
    torch.manual_seed(0)
    learner = build(
        SiameseConfig(hidden=8, features=16, **config),
        {"image_shape": [1, 28, 28], "mean": MEAN, "std": STD},
    )
    learner.eval()  # running statistics: a pair's score depends on that pair alone
    return learner


def normalised_images(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, 1, 28, 28), generator=generator, dtype=torch.uint8)
    return (pixels.float() / 255 - MEAN) / STD


def test_the_score_is_symmetric_in_the_twins():
    learner = small_siamese()
    with torch.no_grad():
        learner.raw_weights.normal_()  # unequal weights per feature
    a, b = normalised_images(6, seed=1), normalised_images(6, seed=2)
    with torch.no_grad():
        forward, swapped = learner.pair_logits(a, b), learner.pair_logits(b, a)
    assert torch.equal(forward, swapped)
    assert forward.unique().numel() == 6  # six different pairs, six different scores


def test_a_zero_distance_pair_scores_highest():
    learner = small_siamese()
    with torch.no_grad():
        learner.raw_weights.normal_()
    images = normalised_images(8)
    with torch.no_grad():
        itself = learner.pair_logits(images, images)
        others = learner.pair_logits(images, images.roll(1, 0))
    assert torch.allclose(itself, learner.bias.expand(8))  # distance 0: the bias, the maximum
    assert (others < itself).all()
    assert (learner.distance_weights() >= 0).all()  # so for any trained weights


def test_distortions_stay_in_the_pixel_range_and_are_seeded():
    images = normalised_images(32)
    images[:, :, :4] = BACKGROUND  # some empty paper at the edges, as Omniglot's
    out = koch_distortions(images, seeded_generator("d", 0), BACKGROUND)
    assert out.shape == images.shape
    assert out.min() >= BACKGROUND - 1e-5 and out.max() <= INK + 1e-5
    again = koch_distortions(images, seeded_generator("d", 0), BACKGROUND)
    other = koch_distortions(images, seeded_generator("d", 1), BACKGROUND)
    assert torch.equal(out, again)
    assert not torch.allclose(out, other)
    assert not torch.allclose(out, images)
    # each component with probability 0.5: with probability 0 an image is left as it was
    untouched = koch_distortions(images, seeded_generator("d", 0), BACKGROUND, probability=0)
    assert torch.allclose(untouched, images, atol=1e-4)  # resampled at the pixel centres


def test_pairs_stay_within_the_episode_and_are_balanced():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])  # 3-way, 3 drawings per class
    same, different = verification_pairs(labels)
    assert same.shape == different.shape == (9, 9)  # only the episode's own 9 images
    first, second = same.nonzero().unbind(1)
    assert (labels[first] == labels[second]).all() and (first != second).all()
    first, second = different.nonzero().unbind(1)
    assert (labels[first] != labels[second]).all()
    assert same.sum() == 18 and different.sum() == 54  # weighed equally in the loss


def test_training_pairs_are_the_given_episodes_images_only(monkeypatch):
    """The loss embeds exactly the episode's support and query images, nothing else."""
    learner = small_siamese(distort=False)
    learner.train()
    x = normalised_images(12).view(1, 12, 1, 28, 28)
    labels = torch.arange(3).repeat(4).view(1, 12)
    episodes = Episodes(x[:, :3], labels[:, :3], x[:, 3:], labels[:, 3:], 3)
    seen = []
    embed = SiameseNetwork.embed
    monkeypatch.setattr(
        SiameseNetwork, "embed", lambda self, im: seen.append(im) or embed(self, im)
    )
    learner.verification_loss(episodes)
    assert len(seen) == 1 and torch.equal(seen[0], x[0])


def test_query_logits_are_each_class_best_support_score():
    learner = small_siamese()
    support = normalised_images(4, seed=3).unsqueeze(0)
    query = normalised_images(3, seed=4).unsqueeze(0)
    episodes = Episodes(support, torch.tensor([[0, 1, 0, 1]]), query, torch.zeros(1, 3), 2)
    with torch.no_grad():
        logits = learner.query_logits(episodes)[0]
        for q in range(3):
            scores = learner.pair_logits(query[0, q : q + 1].expand(4, -1, -1, -1), support[0])
            expected = torch.stack([scores[[0, 2]].max(), scores[[1, 3]].max()])
            assert torch.allclose(logits[q], expected, atol=1e-5)


def test_encoding_each_image_once_equals_encoding_per_episode():
    learner = small_siamese()
    images = torch.randint(0, 256, (10, 6, 1, 28, 28), dtype=torch.uint8)
    sampler = EpisodeSampler(images, MEAN, STD)
    setting = EpisodeSetting(n_way=5, k_shot=2, query=3)
    index = sampler.fixed_episodes(setting, 4, seed=0)
    with learner.meta_test("running_stats"):
        per_episode = learner.test_logits(sampler.gather(setting, index))
        once = learner.feature_logits(
            sampler.encoded(learner.image_encoder()).gather(setting, index)
        )
    assert torch.allclose(once, per_episode, atol=1e-4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_omniglot_small(tmp_path_factory.mktemp("omniglot"))


@pytest.mark.slow
def test_siamese_learns_omniglot_small_five_way_one_shot(tmp_path, data_dir):
    torch.set_num_threads(1)
    exp = fewshot_experiment(
        {
            "method": "siamese",
            "model": {"hidden": 32, "features": 64},
            "train": {"n_way": 20, "k_shot": 1, "query": 5, "meta_batch": 1, "lr": 0.003,
                      "iterations": 100, "val_every": 50, "val_episodes": 20, "device": "cpu"},
            "eval": {"batchnorm": "running_stats", "settings": [{"n_way": 5, "k_shot": 1}],
                     "episodes": 100},
        }
    )  # fmt: skip
    engine, ctx = FewShotEngine(), stage_context(exp, data_dir, tmp_path)
    engine.train(ctx)
    history = json.loads(ctx.history_path.read_text())
    assert [row["iteration"] for row in history] == [50, 100]
    assert 0.5 < history[-1]["train_verification_accuracy"] <= 1
    metrics = engine.evaluate(ctx)
    # chance is 20%; a broken pair loss or nearest-support rule stays near it
    assert metrics["accuracy_5way_1shot"] >= 0.75, metrics
    assert 0 < metrics["accuracy_5way_1shot_ci95"] < 0.05


def test_interrupted_training_resumes_exactly_distortions_included(tmp_path, data_dir, monkeypatch):
    torch.set_num_threads(1)
    exp = fewshot_experiment(
        {
            "method": "siamese",
            "model": {"hidden": 8, "features": 16},
            "train": {"n_way": 5, "query": 2, "meta_batch": 2, "iterations": 6,
                      "val_every": 3, "val_episodes": 2, "device": "cpu"},
            "eval": {"batchnorm": "running_stats"},
        }
    )  # fmt: skip
    engine = FewShotEngine()
    straight = stage_context(exp, data_dir, tmp_path / "straight")
    engine.train(straight)
    resumed = stage_context(exp, data_dir, tmp_path / "resumed")
    assert_crash_resumes_exactly(engine, straight, resumed, SiameseNetwork, monkeypatch)
