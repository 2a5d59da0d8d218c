"""Sample quality of image generators on Omniglot, for every generative model and the
augmentation work that reuses it: a Fréchet distance on the features of a small
classifier trained here on the meta-train classes. It is NOT the Inception-based FID
(no ImageNet network is involved; its numbers are comparable only with each other,
under the same `FeatureClassifierConfig`).

The classifier is a Conv-4 (`nn.Conv4`) trained to tell the meta-train classes apart
on binarised drawings 0–14 of each class; drawings 15–19 measure its accuracy. Trained
from its own seed and settings, it is the same network in every experiment that asks for
it with the same settings, so their distances share one feature space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from hypermeta.config import StrictModel
from hypermeta.engine.device import adam
from hypermeta.methods.generative_base import binarised
from hypermeta.nn import Conv4

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
