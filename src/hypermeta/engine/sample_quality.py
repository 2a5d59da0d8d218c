"""Sample quality of image generators on Omniglot, for every generative model and the
augmentation work that reuses it: a Fréchet distance on the features of a small
classifier trained here on the meta-train classes. It is NOT the Inception-based FID
(no ImageNet network is involved; its numbers are comparable only with each other,
under the same `FeatureClassifierConfig`).

The classifier is a Conv-4 (`nn.Conv4`) trained to tell the meta-train classes apart
on binarised drawings 0–14 of each class; drawings 15–19 measure its accuracy. Trained
from its own seed and settings, it is the same network in every experiment that asks for
it with the same settings, so their distances share one feature space.

Same-class judgement (`same_class_judgement`, for a model that can condition on a drawing:
`samples_like`): does a sample look like its source drawing's class to this classifier?
On classes the generator never saw (the test alphabets), each trial draws N classes and
one of them, uniformly, as the source class; a source drawing x and a real held-out
drawing r of it; the mean features of the other 18 drawings (all but x and r) of each of
the N classes. A sample of x is judged of x's class when its features are nearest
(Euclidean) to the source class's mean: an N-way nearest-class-mean judgement, chance
1/N. The same judgement of r is the reference, what a real new drawing scores.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from hypermeta.config import StrictModel
from hypermeta.engine.device import adam
from hypermeta.errors import HypermetaError
from hypermeta.methods.generative_base import binarised
from hypermeta.nn import Conv4
from hypermeta.stats import mean_interval

HELD_OUT_DRAWINGS = 5  # per class, the last ones: the classifier's accuracy is measured on them


class FeatureClassifierConfig(StrictModel):
    steps: int = Field(300, gt=0, description="Adam steps of the feature classifier")
    batch_size: int = Field(128, gt=0)
    lr: float = Field(0.003, gt=0)
    width: int = Field(32, gt=0, description="Conv-4 channels = feature dimensions")
    classes: int | None = Field(
        None, gt=1, description="a seeded subset of the meta-train classes to tell apart (all)"
    )
    seed: int = 0


class SameClassConfig(StrictModel):
    ways: int = Field(5, gt=1, description="N of the N-way nearest-class-mean judgement")
    trials: int = Field(1000, gt=1, description="source drawings judged (one sample each)")
    classes: int | None = Field(
        None, gt=1, description="a seeded subset of the test classes the trials draw from (all)"
    )
    seed: int = 0


@torch.enable_grad()  # also when called under no_grad, as an evaluation may be
def train_feature_classifier(
    drawings: Tensor, config: FeatureClassifierConfig, device: torch.device
) -> tuple[Conv4, float]:
    """A Conv-4 classifier of the classes of `drawings` (classes, drawings, 1, H, W) uint8
    (or of `config.classes` of them), and its accuracy on each class's last
    HELD_OUT_DRAWINGS drawings; in eval mode."""
    generator = torch.Generator().manual_seed(config.seed)
    if config.classes is not None and config.classes < len(drawings):
        drawings = drawings[torch.randperm(len(drawings), generator=generator)[: config.classes]]
    classes, per_class = drawings.shape[:2]
    shown = per_class - HELD_OUT_DRAWINGS
    images = binarised(drawings).to(device)
    torch.manual_seed(config.seed)
    model = Conv4(drawings.shape[2], config.width, classes, drawings.shape[-1]).to(device)
    optimizer = adam(model.parameters(), config.lr)
    model.train()
    for _ in range(config.steps):
        label = torch.randint(classes, (config.batch_size,), generator=generator)
        drawing = torch.randint(shown, (config.batch_size,), generator=generator)
        loss = F.cross_entropy(model(images[label, drawing]), label.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    held_out = images[:, shown:].flatten(0, 1)
    labels = torch.arange(classes, device=device).repeat_interleave(HELD_OUT_DRAWINGS)
    with torch.no_grad():
        predictions = torch.cat([model(batch).argmax(1) for batch in held_out.split(1000)])
    return model, (predictions == labels).float().mean().item()


@torch.no_grad()
def features(classifier: Conv4, images: Tensor, batch_size: int = 1000) -> Tensor:
    """The classifier's penultimate features of images in [0, 1] (N, 1, H, W): (N, width)."""
    return torch.cat([classifier.features(b).flatten(1) for b in images.split(batch_size)])


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½) between Gaussians fitted to two feature
    sets (N, d); in float64, the matrix square root's trace from the eigenvalues of
    Σa^½ Σb Σa^½ (symmetric, so `eigh` applies)."""
    a, b = a.double(), b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return ((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()


SamplesLike = Callable[[Tensor, int, torch.Generator], Tensor | None]


@torch.no_grad()
def same_class_judgement(
    classifier: Conv4,
    drawings: Tensor,
    samples_like: SamplesLike,
    config: SameClassConfig,
    confidence: float,
) -> dict[str, float] | None:
    """The N-way nearest-class-mean judgement of the module docstring, on `drawings`
    (classes, drawings, 1, H, W) uint8 (test-alphabet classes, each with 3 or more): the
    share of generated samples (`samples_like(sources, 1, generator)`, a
    `GenerativeModel.samples_like`) judged of their source's class, and of real held-out
    drawings, each with its CI half width over trials. None where `samples_like` gives None
    (the model cannot condition)."""
    generator = torch.Generator().manual_seed(config.seed)
    if config.classes is not None and config.classes < len(drawings):
        drawings = drawings[torch.randperm(len(drawings), generator=generator)[: config.classes]]
    classes, per_class = drawings.shape[:2]
    if classes < config.ways or per_class < 3:
        raise HypermetaError(
            f"the same-class judgement needs {config.ways} classes of 3 or more drawings; "
            f"these are {classes} of {per_class}: lower same_class.ways or raise its classes."
        )
    device = next(classifier.parameters()).device
    chosen = torch.stack(
        [torch.randperm(classes, generator=generator)[: config.ways] for _ in range(config.trials)]
    )  # (trials, ways), the source class first
    order = torch.stack([torch.randperm(per_class, generator=generator) for _ in chosen])
    images = binarised(drawings).to(device)
    sources, held_out = images[chosen[:, 0], order[:, 0]], images[chosen[:, 0], order[:, 1]]
    generated = samples_like(sources, 1, generator)
    if generated is None:
        return None
    table = features(classifier, images.flatten(0, 1)).view(classes, per_class, -1)
    means = table[chosen.unsqueeze(2), order[:, 2:].unsqueeze(1)].mean(2)  # (trials, ways, d)
    metrics: dict[str, float] = {"same_class_ways": config.ways, "same_class_trials": config.trials}
    for name, judged in (("generated", generated[:, 0]), ("real", held_out)):
        distances = torch.cdist(features(classifier, judged).unsqueeze(1), means).squeeze(1)
        correct = (distances.argmin(1) == 0).float().cpu()
        key = f"same_class_accuracy_{name}"
        metrics[key], metrics[f"{key}_ci95"] = mean_interval(correct, confidence)
    return metrics
