"""The generative engine and its models: known answers for the VAE's KL and the GAN's
losses, the Fréchet distance, that training reads no evaluation alphabet, exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from fewshot_helpers import assert_crash_resumes_exactly, prepared_omniglot_small, stage_context

from hypermeta.config import Params
from hypermeta.engine import generative
from hypermeta.engine.generative import GenerativeEngine
from hypermeta.engine.sample_quality import frechet_distance
from hypermeta.experiments import resolve
from hypermeta.methods.gan import discriminator_loss, generator_loss
from hypermeta.methods.generative_base import GenerativeModel
from hypermeta.methods.vae import gaussian_kl


def test_analytic_kl_matches_a_monte_carlo_estimate():
    generator = torch.Generator().manual_seed(0)
    mean, log_var = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.0, -1.0, 0.7]])
    z = mean + (0.5 * log_var).exp() * torch.randn(200_000, 3, generator=generator)
    log_q = torch.distributions.Normal(mean, (0.5 * log_var).exp()).log_prob(z).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    assert gaussian_kl(mean, log_var).item() == pytest.approx(
        (log_q - log_p).mean().item(), abs=0.02
    )


def test_gan_losses_are_the_formulas_on_a_hand_computed_case():
    # D = sigmoid(logit): logit 0 → 1/2, logit log 3 → 3/4
    real, fake = torch.tensor([0.0, math.log(3)]), torch.tensor([math.log(3), 0.0])
    d_expected = -(math.log(0.5) + math.log(0.75)) / 2 - (math.log(0.25) + math.log(0.5)) / 2
    g_expected = -(math.log(0.75) + math.log(0.5)) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(d_expected, rel=1e-6)
    assert generator_loss(fake).item() == pytest.approx(g_expected, rel=1e-6)


def test_frechet_distance_of_shifted_gaussians_is_the_squared_shift():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(20_000, 4, generator=generator)
    b = torch.randn(20_000, 4, generator=generator) + torch.tensor([1.0, 0, 0, 2.0])
    assert frechet_distance(a, b) == pytest.approx(5.0, abs=0.1)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def experiment(method: str, model: dict, eval: dict | None = None):
    params = Params.model_validate(
        {
            "profile": "quick",
            "profiles": {"quick": "tests"},
            "data": {"datasets": {"quick": ["omniglot_small"]}},
            "experiments": {
                "gen": {
                    "dataset": "omniglot_small",
                    "method": method,
                    "model": model,
                    "train": {
                        "iterations": 6,
                        "log_every": 3,
                        "checkpoint_every": 3,
                        "batch_size": 8,
                        "val_images": 16,
                        "device": "cpu",
                    },
                    "eval": eval or {},
                }  # fmt: skip
            },
        }
    )
    return resolve(params, "gen")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_omniglot_small(tmp_path_factory.mktemp("omniglot"))


@pytest.mark.parametrize(
    "method,model",
    [("vae", {"latent_size": 4, "hidden": 4}), ("dcgan", {"latent_size": 4, "width": 4})],
)
def test_interrupted_training_resumes_exactly(tmp_path, data_dir, monkeypatch, method, model):
    torch.set_num_threads(1)
    exp = experiment(method, model)
    engine = GenerativeEngine()
    straight = stage_context(exp, data_dir, tmp_path / "straight")
    engine.train(straight)
    resumed = stage_context(exp, data_dir, tmp_path / "resumed")
    assert_crash_resumes_exactly(engine, straight, resumed, GenerativeModel, monkeypatch)


def test_training_reads_no_evaluation_alphabet(tmp_path, data_dir, monkeypatch):
    read = []
    load_split = generative.load_split

    def recording(folder, split):
        read.append(split)
        return load_split(folder, split)

    monkeypatch.setattr(generative, "load_split", recording)
    GenerativeEngine().train(
        stage_context(experiment("vae", {"latent_size": 4}), data_dir, tmp_path)
    )
    assert sorted(set(read)) == ["train", "val"]


def test_vae_elbo_rises_and_reconstructs_a_training_image_better_than_noise():
    from hypermeta.engine.device import adam
    from hypermeta.methods.vae import VAEConfig, bernoulli_log_likelihood, build

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    patterns = (torch.rand(4, 1, 28, 28, generator=generator) < 0.2).float()
    images = patterns.repeat(8, 1, 1, 1)
    vae = build(VAEConfig(latent_size=4, hidden=8), {"image_shape": [1, 28, 28]})
    optimizers = {"vae": adam(vae.parameters(), 0.01)}
    before = vae.elbo(images, generator).mean().item()
    for _ in range(60):
        vae.train_step(images, optimizers, generator)
    after = vae.elbo(images, generator).mean().item()
    assert after > before + 100  # nats per image: about -510 before, -160 after
    noise = (torch.rand(1, 1, 28, 28, generator=generator) < 0.2).float()
    with torch.no_grad():
        own = bernoulli_log_likelihood(vae.decoder_logits(vae.encode(images[:1])), images[:1])
        other = bernoulli_log_likelihood(vae.decoder_logits(vae.encode(noise)), noise)
    assert own.item() > other.item() + 50


def test_visualize_draws_samples_interpolation_neighbours_and_samples_like(tmp_path, data_dir):
    from hypermeta.plots import get_plotter

    ctx = stage_context(experiment("vae", {"latent_size": 4, "hidden": 4}), data_dir, tmp_path)
    GenerativeEngine().train(ctx)
    paths = get_plotter("generative").visualize(ctx)
    assert [p.name for p in paths] == [
        "curves.png",
        "samples.png",
        "interpolation.png",
        "nearest.png",
        "samples_like.png",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_gan_covers_most_modes_of_a_ring_of_eight_gaussians():
    """The known-answer toy: 8 Gaussians (std 0.02) on a circle of radius 0.8; after 1000
    steps (about 1.5 CPU-s) at least 6 modes each hold over 2% of 1000 samples, and
    over 30% of the samples lie within 0.1 of a mode (8 of 8 and 57% as measured)."""
    from hypermeta.engine.device import adam
    from hypermeta.methods.gan import GAN, mlp_discriminator, mlp_generator

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    angles = torch.arange(8) * 2 * math.pi / 8
    centres = 0.8 * torch.stack([angles.cos(), angles.sin()], 1)
    gan = GAN(mlp_generator(8, [128, 128], 2), mlp_discriminator(2, [128, 128]), 8, (2,))
    optimizers = {
        name: adam(params, 1e-3, betas=(0.5, 0.999))
        for name, params in gan.parameter_groups().items()
    }
    for _ in range(1000):
        points = centres[torch.randint(8, (128,), generator=generator)]
        points = points + 0.02 * torch.randn(128, 2, generator=generator)
        gan.train_step((points + 1) / 2, optimizers, generator)  # the GAN takes [0, 1]
    gan.eval()
    with torch.no_grad():
        samples = 2 * gan.sample(1000, generator) - 1
    close = torch.cdist(samples, centres) < 0.1
    assert (close.sum(0) > 20).sum().item() >= 6
    assert close.any(1).float().mean().item() > 0.3
