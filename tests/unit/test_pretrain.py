"""The pre-training classifier (methods/pretrain.py): trained on the training split's own
class labels, carried by the episodes, and nothing of the other splits."""

from __future__ import annotations

import pytest
import torch

from hypermeta.data.episodes import EpisodeSampler, EpisodeSetting, seeded_generator
from hypermeta.methods.pretrain import PretrainConfig, build


def labelled_split(classes: int, drawings: int = 6) -> torch.Tensor:
    """(classes, drawings, 1, 28, 28) uint8 images whose every pixel is the class index."""
    values = torch.arange(classes, dtype=torch.uint8).view(classes, 1, 1, 1, 1)
    return values.expand(classes, drawings, 1, 28, 28).clone()


def test_episodes_carry_the_split_class_of_every_image():
    sampler = EpisodeSampler(labelled_split(40), mean=0.0, std=1.0)
    episodes = sampler.sample(EpisodeSetting(5, 2, 3), 4, seeded_generator("t", 0))
    support = episodes.classes.gather(1, episodes.support_y)
    query = episodes.classes.gather(1, episodes.query_y)
    # the pixel value of each image (std 1, mean 0: value / 255) is its split class
    assert torch.equal((episodes.support_x[:, :, 0, 0, 0] * 255).round().long(), support)
    assert torch.equal((episodes.query_x[:, :, 0, 0, 0] * 255).round().long(), query)


@pytest.mark.parametrize("softmax_over", ["all", "batch"])
def test_the_classifier_has_one_output_per_training_class_and_learns_them(softmax_over):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 6, 1, 28, 28), dtype=torch.uint8)
    info = {"image_shape": [1, 28, 28], "counts": {"train": 12}}
    learner = build(PretrainConfig(hidden=8, softmax_over=softmax_over), info)
    assert learner.head.out_features == 12
    sampler = EpisodeSampler(images, mean=0.5, std=0.3)
    optimizer = torch.optim.Adam(learner.parameters(), 0.01)
    setting = EpisodeSetting(6, 2, 4)  # half the classes per step
    losses = [
        learner.meta_step(sampler.sample(setting, 1, seeded_generator("t", i)), optimizer)["loss"]
        for i in range(60)
    ]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10  # it fits the 12 classes
