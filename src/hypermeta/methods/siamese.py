"""Siamese networks (Koch, Zemel & Salakhutdinov 2015): a convolutional twin trained for
verification, "same character or not?", on pairs of meta-training images; one-shot
classification is the support image most similar to the query.

- Pairs: every pair of each training episode's own images (support and queries
  together), so they never leave the episode's classes, which the engine draws from the
  meta-training split alone; the loss weighs same and different pairs equally (a 20-way
  episode of 6 drawings per class has 600 same and 13,680 different ordered pairs), all
  scored from one pass of the twin over the episode.
- Koch's affine distortions on the training images, each component applied with
  probability 0.5: rotation ±10°, shears ±0.3 (x and y), scales 0.8–1.2 (x and y),
  translations ±2 px (x and y); seeded by meta-iteration, so a resumed run repeats.
- Score of a pair: σ(b − Σ_j w_j |h1_j − h2_j|), the weighted L1 distance between the twin
  embeddings into a sigmoid, with BCE on same/different. Koch's weights are free; here
  w_j = softplus(·) ≥ 0, so a zero distance scores highest for any weights.
- Query logits: the pre-sigmoid score against each support image; a class's score is its
  highest (K > 1: the most similar of its shots, the nearest-neighbour rule of one-shot).

The twin is Conv-4 at 28×28 (the prepared Omniglot's size) in every profile; Koch's
105×105 network would need the split stage to keep 105×105 images, which it does not.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import nn

from hypermeta.config import StrictModel
from hypermeta.data.episodes import Episodes, seeded_generator
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.fewshot_base import FewShotLearner, embedded_per_episode
from hypermeta.nn.conv4 import Conv4

ROTATION_DEGREES = 10.0
SHEAR = 0.3
SCALE = (0.8, 1.2)
TRANSLATION_PIXELS = 2.0
INITIAL_WEIGHT_SUM, INITIAL_BIAS = 32.0, 4.0  # Σ_j w_j and b at the start (SiameseNetwork)


class SiameseConfig(StrictModel):
    hidden: int = Field(64, gt=0, description="filters per Conv-4 block of the twin")
    features: int = Field(
        128, gt=0, description="sigmoid units of the twin's last, fully connected layer (Koch)"
    )
    distort: bool = Field(True, description="Koch's affine distortions on training images")
    distort_probability: float = Field(
        0.5, ge=0, le=1, description="chance each distortion component is applied"
    )


def koch_distortions(
    images: torch.Tensor, generator: torch.Generator, background: float, probability: float = 0.5
) -> torch.Tensor:
    """(n, C, H, W) images, each through its own random affine map (Koch et al. 2015 §4.2):
    rotation, x and y shear, x and y scale, x and y translation, each component drawn
    with `probability`, else the identity. Bilinear resampling of the image minus
    `background` (the value of empty paper) with zero padding, plus `background` again:
    every output pixel is background plus a sub-convex mix of input pixels above it, so
    the output stays in the input's range."""
    n, _, height, width = images.shape
    uniform = torch.rand(n, 7, generator=generator) * 2 - 1  # in [-1, 1)
    applied = torch.rand(n, 7, generator=generator) < probability
    low, high = SCALE
    centre, spread = (low + high) / 2, (high - low) / 2
    identity = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    drawn = torch.stack(
        [
            uniform[:, 0] * math.radians(ROTATION_DEGREES),
            uniform[:, 1] * SHEAR,
            uniform[:, 2] * SHEAR,
            centre + uniform[:, 3] * spread,
            centre + uniform[:, 4] * spread,
            uniform[:, 5] * TRANSLATION_PIXELS * 2 / width,  # pixels → [-1, 1] coordinates
            uniform[:, 6] * TRANSLATION_PIXELS * 2 / height,
        ],
        dim=1,
    )
    angle, shear_x, shear_y, scale_x, scale_y, shift_x, shift_y = torch.where(
        applied, drawn, identity
    ).unbind(1)
    cos, sin, one = angle.cos(), angle.sin(), torch.ones(n)
    rotation = torch.stack([cos, -sin, sin, cos], 1).view(n, 2, 2)
    shear = torch.stack([one, shear_x, shear_y, one], 1).view(n, 2, 2)
    scale = torch.diag_embed(torch.stack([scale_x, scale_y], 1))
    linear = rotation @ shear @ scale
    theta = torch.cat([linear, torch.stack([shift_x, shift_y], 1).unsqueeze(-1)], 2)
    theta = theta.to(images.device, images.dtype)
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    shifted = images - background
    warped = nn.functional.grid_sample(shifted, grid, "bilinear", "zeros", align_corners=False)
    return warped + background


def verification_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs among one episode's M images, labelled `labels` (M,): (same, different),
    (M, M) masks of the ordered pairs of two drawings of one class (an image never with
    itself) and of two classes. The loss weighs the two sets equally: balanced."""
    same_class = labels.unsqueeze(0) == labels.unsqueeze(1)
    itself = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same_class & ~itself, ~same_class


class SiameseNetwork(FewShotLearner):
    def __init__(self, twin: nn.Module, config: SiameseConfig, background: float) -> None:
        super().__init__()
        self.twin = twin.to(memory_format=torch.channels_last)  # as ProtoNet: faster on a CPU
        # The scale of the distance at the start: Adam moves w and b by about the learning
        # rate per step, so a scale far from the one needed takes hundreds of steps to
        # reach. Measured (quick Omniglot, 150 steps of lr 0.003, 20-way 1-shot validation):
        # Σw = 32, b = 4 reach 67%; Σw = 8: 46%; Σw = 1, b = 0: 17%.
        start = math.log(math.expm1(INITIAL_WEIGHT_SUM / config.features))
        self.raw_weights = nn.Parameter(torch.full((config.features,), start))
        self.bias = nn.Parameter(torch.full((), INITIAL_BIAS))
        self.config = config
        self.background = background
        self.iteration = 0

    def distance_weights(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_weights)

    def similarity(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores b − Σ_j w_j |first_j − second_j| of embeddings (..., P, D)
        against (..., S, D): (..., P, S). Symmetric; highest at distance zero."""
        weights = self.distance_weights()
        return self.bias - torch.cdist(first * weights, second * weights, p=1)

    def pair_logits(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """(P,) pre-sigmoid scores of P image pairs (P, C, H, W) × 2."""
        embedded = self.embed(torch.cat([first, second]))
        a, b = embedded.chunk(2)
        return self.similarity(a.unsqueeze(1), b.unsqueeze(1)).flatten()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.twin(images)

    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        return self.feature_logits(embedded_per_episode(self.twin, episodes))

    def feature_logits(self, episodes: Episodes) -> torch.Tensor:
        scores = self.similarity(episodes.query_x, episodes.support_x)  # (B, N·Q, N·K)
        by_class = episodes.support_y.unsqueeze(1).expand_as(scores)
        best = scores.new_full((*scores.shape[:2], episodes.n_way), -math.inf)
        return best.scatter_reduce(2, by_class, scores, "amax")

    def test_logits(self, episodes: Episodes) -> torch.Tensor:
        with torch.no_grad():
            return self.query_logits(episodes)

    def image_encoder(self) -> nn.Module | None:
        # With running batch-norm statistics an embedding depends on its image alone.
        return None if any(m.training for m in self.twin.modules()) else self.twin

    def on_iteration(self, iteration: int, total: int) -> None:
        self.iteration = iteration

    def verification_loss(self, episodes: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
        """BCE over each episode's pairs of (distorted) images, same and different pairs
        weighed equally; (loss, balanced pair accuracy)."""
        generator = seeded_generator("siamese distortions", self.iteration)
        losses, accuracies = [], []
        for support_x, support_y, query_x, query_y in zip(
            episodes.support_x, episodes.support_y, episodes.query_x, episodes.query_y,
            strict=True,
        ):  # fmt: skip
            images = torch.cat([support_x, query_x])
            if self.config.distort:
                images = koch_distortions(
                    images, generator, self.background, self.config.distort_probability
                )
            embedded = self.embed(images)
            scores = self.similarity(embedded, embedded)  # (M, M), every pair at once
            same, different = verification_pairs(torch.cat([support_y, query_y]))
            bce = nn.functional.binary_cross_entropy_with_logits(
                scores, same.to(scores.dtype), reduction="none"
            )
            losses.append((bce[same].mean() + bce[different].mean()) / 2)
            right = ((scores[same] > 0).float().mean(), (scores[different] <= 0).float().mean())
            accuracies.append(sum(right) / 2)
        return torch.stack(losses).mean(), torch.stack(accuracies).mean()

    def meta_step(self, episodes: Episodes, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        loss, accuracy = self.verification_loss(episodes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "verification_accuracy": accuracy.item()}


def build(config: SiameseConfig, data_info: dict[str, Any]) -> SiameseNetwork:
    channels, height, _ = data_info["image_shape"]
    conv4 = Conv4(channels, config.hidden, image_size=height)
    twin = nn.Sequential(conv4, nn.Linear(conv4.embedding_size, config.features), nn.Sigmoid())
    # The normalised value of empty paper (pixel 0), which distortions pad with; a bare
    # image shape (no statistics) means unnormalised images.
    background = -data_info.get("mean", 0.0) / data_info.get("std", 1.0)
    return SiameseNetwork(twin, config, background)


register(
    MethodSpec(
        name="siamese",
        kind="fewshot",
        model_config=SiameseConfig,
        build=build,
        summary="Siamese network (Koch 2015) on Conv-4: verification pairs, weighted L1, "
        "nearest support image",
    )
)
