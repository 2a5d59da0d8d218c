"""DAGAN and the same-class judgement: a sample depends on its own condition and noise
only, a seed repeats a sample, the pair discriminator's losses are the formulas, same-class
pairs are of one class, training resumes exactly; the judgement's known answers."""

from __future__ import annotations

import math

import pytest
import torch
from fewshot_helpers import assert_crash_resumes_exactly, stage_context
from test_generative import data_dir, experiment  # noqa: F401  (data_dir: a fixture)

from hypermeta.engine.generative import GenerativeEngine, same_class_pairs
from hypermeta.engine.sample_quality import SameClassConfig, same_class_judgement
from hypermeta.methods.dagan import DAGANConfig, build
from hypermeta.methods.gan import discriminator_loss, generator_loss
from hypermeta.methods.generative_base import GenerativeModel
from hypermeta.nn import Conv4


def small_dagan():
    torch.manual_seed(0)
    return build(DAGANConfig(noise_size=4, width=4), {"image_shape": [1, 28, 28]})


def drawings_batch(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=generator) < 0.2).float()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_sample_depends_only_on_its_condition_and_noise(mode):
    dagan = small_dagan().train(mode == "train")
    images = drawings_batch(6, 0)
    others = images.clone()
    others[1:] = drawings_batch(5, 1)  # every other support or query image changed
    with torch.no_grad():
        a = dagan.samples_like(images, 3, torch.Generator().manual_seed(7))
        b = dagan.samples_like(others, 3, torch.Generator().manual_seed(7))
        z = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(7))
        alone = dagan.generator(2 * images[:1].expand(3, -1, -1, -1) - 1, z[:, 0])
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[1], b[1])
    # the same condition and noise, without any other image in the batch
    assert torch.allclose(a[0], (alone + 1) / 2, atol=1e-6)


def test_the_same_seed_gives_the_same_sample_and_another_seed_another():
    dagan = small_dagan().eval()
    images = drawings_batch(2, 0)
    with torch.no_grad():
        first = dagan.samples_like(images, 2, torch.Generator().manual_seed(3))
        again = dagan.samples_like(images, 2, torch.Generator().manual_seed(3))
        other = dagan.samples_like(images, 2, torch.Generator().manual_seed(4))
    assert first.shape == (2, 2, 1, 28, 28)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first[:, 0], first[:, 1])  # m draws differ by their noise


def test_the_pair_discriminator_is_scored_by_the_gan_formulas(monkeypatch):
    """Real pairs are (x, x'), fake pairs (x, G(x, z)); with the discriminator's logits
    fixed at log 3 (D = 3/4) for real and 0 (D = 1/2) for fake pairs the two losses are
    −log 3/4 − log 1/2 and −log 1/2."""
    dagan = small_dagan()
    pairs = torch.stack([drawings_batch(4, 0), drawings_batch(4, 1)], 1)
    real, fake = dagan.discriminated(pairs, torch.Generator().manual_seed(0))
    assert torch.equal(real, torch.cat([2 * pairs[:, 0] - 1, 2 * pairs[:, 1] - 1], 1))
    assert torch.equal(fake[:, :1], 2 * pairs[:, 0] - 1)  # the condition, then G's drawing
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fake[:, 1:], dagan.generator(2 * pairs[:, 0] - 1, z))
    real_logits, fake_logits = torch.full((4,), math.log(3)), torch.zeros(4)
    d_expected = -math.log(0.75) - math.log(0.5)
    assert discriminator_loss(real_logits, fake_logits).item() == pytest.approx(d_expected)
    assert generator_loss(fake_logits).item() == pytest.approx(-math.log(0.5))
    optimizers = {
        name: torch.optim.Adam(params, 1e-3) for name, params in dagan.parameter_groups().items()
    }
    losses = dagan.train_step(pairs, optimizers, torch.Generator().manual_seed(0))
    assert set(losses) == {"discriminator_loss", "generator_loss"}


def test_same_class_pairs_are_two_different_drawings_of_one_class():
    # drawing d of class c holds the value 100 c + d
    images = (100 * torch.arange(30).view(30, 1) + torch.arange(20)).float()
    pairs = same_class_pairs(images, 500, torch.Generator().manual_seed(0))
    assert pairs.shape == (500, 2)
    assert torch.equal(pairs[:, 0] // 100, pairs[:, 1] // 100)
    assert (pairs[:, 0] != pairs[:, 1]).all()


def test_dagan_training_resumes_exactly(tmp_path, data_dir, monkeypatch):  # noqa: F811
    torch.set_num_threads(1)
    exp = experiment("dagan", {"noise_size": 4, "width": 4})
    engine = GenerativeEngine()
    straight = stage_context(exp, data_dir, tmp_path / "straight")
    engine.train(straight)
    resumed = stage_context(exp, data_dir, tmp_path / "resumed")
    assert_crash_resumes_exactly(engine, straight, resumed, GenerativeModel, monkeypatch)


def test_same_class_judgement_known_answers():
    """Classes of identical copies: a copy of the source is always judged of its class
    (as is the real held-out drawing); noise is judged so at chance, 1 in `ways`."""
    torch.manual_seed(0)
    classifier = Conv4(1, 8, 10, 28).eval()
    patterns = torch.rand(12, 1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    drawings = (255 * (patterns < 0.2)).to(torch.uint8).expand(12, 20, 1, 28, 28)
    config = SameClassConfig(ways=5, trials=2000)

    def copies(images, m, generator):
        return images.unsqueeze(1).expand(-1, m, -1, -1, -1)

    def noise(images, m, generator):
        return torch.rand(len(images), m, *images.shape[1:], generator=generator)

    exact = same_class_judgement(classifier, drawings, copies, config, 0.95)
    assert exact["same_class_accuracy_generated"] == 1.0
    assert exact["same_class_accuracy_real"] == 1.0
    chance = same_class_judgement(classifier, drawings, noise, config, 0.95)
    assert chance["same_class_accuracy_generated"] == pytest.approx(0.2, abs=0.04)
    assert same_class_judgement(classifier, drawings, lambda *a: None, config, 0.95) is None


@pytest.mark.parametrize("method,model", [("dagan", {"noise_size": 4, "width": 4}), ("dcgan", {})])
def test_evaluate_judges_only_a_conditioning_model(tmp_path, data_dir, method, model):  # noqa: F811
    torch.set_num_threads(1)
    small = {
        "fd_samples": 40,
        "feature_classifier": {"steps": 5, "batch_size": 16, "width": 8},
        "same_class": {"trials": 50},
    }
    ctx = stage_context(experiment(method, model, small), data_dir, tmp_path)
    engine = GenerativeEngine()
    engine.train(ctx)
    metrics = engine.evaluate(ctx)
    assert math.isfinite(metrics["frechet_distance"])
    if method == "dagan":
        assert 0 <= metrics["same_class_accuracy_generated"] <= 1
        assert 0 <= metrics["same_class_accuracy_real"] <= 1
        assert metrics["same_class_trials"] == 50
    else:  # an unconditional GAN cannot make a drawing of a given class
        assert not any(key.startswith("same_class") for key in metrics)
