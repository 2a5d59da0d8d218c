"""LEO (methods/leo.py) on synthetic features: its inner loop, penalties, gradients,
invariances, and learning a few-shot task far above chance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hypermeta.data.episodes import Episodes
from hypermeta.methods.leo import LEO, LEOConfig, kl_to_prior, orthogonality, squared_norm
from hypermeta.nn.conv4 import Conv4

FEATURES = 16  # Conv-4 of width 16 on 28x28 images: 16 features per image


def leo(**config) -> LEO:
    torch.manual_seed(0)
    return LEO(Conv4(1, FEATURES, image_size=28), LEOConfig(hidden=FEATURES, latent=8, **config))


def feature_episodes(tasks: int, n_way: int, k_shot: int, query: int, seed: int) -> Episodes:
    """Tasks of Gaussian classes in feature space: a random centre per class."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(tasks, n_way, 1, FEATURES, generator=g) * 2
    support = centres + 0.5 * torch.randn(tasks, n_way, k_shot, FEATURES, generator=g)
    queries = centres + 0.5 * torch.randn(tasks, n_way, query, FEATURES, generator=g)
    labels = torch.arange(n_way).unsqueeze(0).expand(tasks, -1)
    return Episodes(
        support.flatten(1, 2),
        labels.repeat_interleave(k_shot, 1),
        queries.flatten(1, 2),
        labels.repeat_interleave(query, 1),
        n_way,
    )


def test_the_latent_inner_loop_lowers_the_support_loss():
    learner = leo(finetune_steps=0).eval()
    episodes = feature_episodes(4, 5, 1, 3, seed=1)
    losses = []
    for steps in (0, 1, 3):
        with learner.with_inner_steps(steps), torch.enable_grad():
            weight = learner.adapt(episodes)["weight"]
        scores = learner.scores(weight, episodes.support_x)
        losses.append(F.cross_entropy(scores.flatten(0, 1), episodes.support_y.flatten()).item())
    assert losses[0] > losses[1] > losses[2]


def test_each_penalty_is_zero_exactly_where_it_must_be():
    assert kl_to_prior(torch.zeros(3, 8), torch.ones(3, 8)).item() == 0
    assert kl_to_prior(torch.full((3, 8), 0.5), torch.ones(3, 8)).item() > 0
    assert kl_to_prior(torch.zeros(3, 8), torch.full((3, 8), 2.0)).item() > 0
    orthonormal = torch.linalg.qr(torch.randn(32, 8)).Q  # (2D, latent): orthonormal columns
    assert orthogonality(orthonormal).item() < 1e-12
    assert orthogonality(torch.randn(32, 8)).item() > 0
    learner = leo()
    assert squared_norm(learner.encoder).item() > 0
    torch.nn.init.zeros_(learner.encoder.weight)
    assert squared_norm(learner.encoder).item() == 0


def test_the_meta_gradient_reaches_encoder_relation_decoder_and_step_sizes():
    learner = leo().train()
    learner.on_iteration(0, 1)
    loss, _ = learner.loss(feature_episodes(2, 5, 2, 3, seed=2))
    loss.backward()
    for name in ("encoder", "relation", "decoder"):
        grads = [p.grad for p in getattr(learner, name).parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    assert learner.inner_lr.grad.abs().sum() > 0
    assert learner.finetune_lr.grad.abs().sum() > 0
    assert all(p.grad is None for p in learner.features.parameters())  # frozen


def test_shuffling_the_support_set_and_relabelling_classes_permute_nothing_else():
    # in float64: the summed support loss takes large inner steps, which carry float32's
    # summation-order noise (1e-5) into the logits; float64's stays far below 1e-9
    learner = leo().double().eval()
    episodes = feature_episodes(2, 5, 3, 2, seed=3)
    episodes = Episodes(
        episodes.support_x.double(), episodes.support_y, episodes.query_x.double(),
        episodes.query_y, 5,
    )  # fmt: skip
    reference = learner.test_logits(episodes)
    order = torch.randperm(episodes.support_x.shape[1], generator=torch.Generator().manual_seed(0))
    shuffled = Episodes(
        episodes.support_x[:, order],
        episodes.support_y[:, order],
        episodes.query_x,
        episodes.query_y,
        5,
    )
    torch.testing.assert_close(learner.test_logits(shuffled), reference, atol=1e-9, rtol=1e-9)
    relabel = torch.tensor([3, 0, 4, 1, 2])  # class c is called relabel[c]
    renamed = Episodes(
        episodes.support_x, relabel[episodes.support_y], episodes.query_x, episodes.query_y, 5
    )
    logits = learner.test_logits(renamed)
    torch.testing.assert_close(logits[..., relabel], reference, atol=1e-9, rtol=1e-9)


def test_leo_learns_a_synthetic_few_shot_task_far_above_chance():
    learner = leo(inner_steps=2, finetune_steps=1, dropout=0.0)
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], 3e-3)
    for iteration in range(150):
        learner.train().on_iteration(iteration, 150)
        learner.meta_step(feature_episodes(8, 5, 1, 3, seed=100 + iteration), optimizer)
    test = feature_episodes(50, 5, 1, 5, seed=7)
    with learner.meta_test("running_stats"):
        accuracy = (learner.test_logits(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.7  # chance 0.2


def test_plot_hooks_give_codes_and_heads_of_any_number_of_ways():
    learner = leo().eval()
    episodes = feature_episodes(3, 7, 1, 1, seed=4)
    assert learner.task_codes(episodes).shape == (3, 8)
    assert learner.generated_head(episodes).shape == (3, 7, FEATURES)
    with learner.with_inner_steps(0):
        assert learner.inner_steps == 0
    assert learner.inner_steps == learner.config.inner_steps
