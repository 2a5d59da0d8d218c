"""Task generation (issue 20): new meta-training classes from a generative model's latent
space, mixed into a few-shot learner's meta-training episodes (`train.generated_tasks`).

A synthetic class is a cluster of drawings decoded around one latent centre: `interpolate`
puts the centre between the mean codes of two meta-train classes (at a weight drawn
uniformly in [0.25, 0.75], so it is neither of them), `prior` draws it from N(0, I). Its
drawings decode the centre plus Gaussian noise of `spread` × the within-class std of the
meta-train codes (per dimension), kept as the decoder's stroke probabilities in the real
split's uint8 scale (thresholded at 0.5, a briefly trained VAE's drawings came out blank).
The generative experiment is listed under `needs:` and must have been trained on this
experiment's own meta-train split (compared by the split's md5), and only that split's
drawings are encoded, so no meta-test character reaches a synthetic class. The classes are
made once per train stage from a generator seeded by `train.seed` (a resumed run makes the
same ones), held as a uint8 tensor beside the real split, and `MixedEpisodeSampler` draws a
`fraction` of the meta-training episodes from them.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from hypermeta.config import StrictModel
from hypermeta.data.episodes import EpisodeSampler, seeded_generator
from hypermeta.data.mixed_episodes import MixedEpisodeSampler
from hypermeta.engine.base import StageContext
from hypermeta.engine.classification import load_trained
from hypermeta.errors import HypermetaError
from hypermeta.methods.generative_base import GenerativeModel, binarised

PREVIEW_CLASSES = 6  # synthetic classes kept in model.pt for the visualize stage


class GeneratedTasks(StrictModel):
    model: str = Field(
        description="the generative experiment (listed under needs) whose latent space "
        "makes the classes; trained on this experiment's meta-train split"
    )
    classes: int = Field(200, gt=0, description="synthetic classes, made once per train stage")
    kind: Literal["interpolate", "prior"] = Field(
        "interpolate",
        description="interpolate: a centre between two meta-train classes' mean codes; "
        "prior: a centre drawn from the prior",
    )
    spread: float = Field(
        1.0, ge=0, description="noise around a class's centre, in within-class stds of codes"
    )
    fraction: float = Field(
        0.5, ge=0, le=1, description="share of meta-training episodes drawn from them"
    )


def load_generator(
    ctx: StageContext, cfg: GeneratedTasks, info: dict[str, Any], where: str
) -> GenerativeModel:
    """The needed generative model, refused unless it encodes and decodes drawings and was
    trained on exactly this experiment's meta-train split."""
    model, saved = load_trained(ctx.needed_model(cfg.model))  # refuses one not under needs
    if not isinstance(model, GenerativeModel):
        raise HypermetaError(
            f"{where}.model is {cfg.model!r}, whose {saved['experiment']['method']!r} model "
            "cannot encode and decode drawings; name a generative experiment (e.g. vae_omniglot)."
        )
    theirs = saved["data_info"].get("tensor_md5", {}).get("train")
    if theirs != info["tensor_md5"]["train"]:
        raise HypermetaError(
            f"{where}.model {cfg.model!r} was trained on another meta-train split than this "
            f"experiment's ({info['split_summary']}), so its classes could hold meta-test "
            "characters; give both experiments the same dataset and split."
        )
    return model


@torch.no_grad()
def codes_of(model: GenerativeModel, images: Tensor) -> Tensor:
    """Latent codes of uint8 drawings (N, 1, H, W), in batches."""
    device = next(model.parameters()).device
    return torch.cat([model.encode(binarised(part).to(device)) for part in images.split(512)])


@torch.no_grad()
def generate_classes(
    model: GenerativeModel, train_images: Tensor, cfg: GeneratedTasks, seed: int
) -> tuple[Tensor, Tensor]:
    """`cfg.classes` synthetic classes of as many drawings as each real class, (classes,
    drawings, 1, H, W) uint8 (stroke probability × 255, strokes light as in the real
    split), and the two meta-train classes each is made from (indices into `train_images`,
    (classes, 2)): interpolated between, or whose codes set the spread (`prior`)."""
    generator = seeded_generator("generated classes", seed)
    num_real, drawings = train_images.shape[:2]
    if num_real < 2:
        raise HypermetaError("task generation needs at least 2 meta-train classes.")
    pairs = torch.stack(
        [torch.randperm(num_real, generator=generator)[:2] for _ in range(cfg.classes)]
    )
    sources = pairs.unique()  # sorted: each source class encoded once
    codes = codes_of(model, train_images[sources].flatten(0, 1).cpu()).cpu()
    codes = codes.view(len(sources), drawings, -1)
    means, within = codes.mean(1), codes.std(1).mean(0)  # (S, d), (d,)
    if cfg.kind == "interpolate":
        ends = means[torch.searchsorted(sources, pairs)]  # (classes, 2, d)
        weight = 0.25 + 0.5 * torch.rand(cfg.classes, 1, generator=generator)
        centres = (1 - weight) * ends[:, 0] + weight * ends[:, 1]
    else:
        centres = torch.randn(cfg.classes, model.latent_size, generator=generator)
    noise = torch.randn(cfg.classes, drawings, model.latent_size, generator=generator)
    z = centres.unsqueeze(1) + cfg.spread * within * noise
    device = next(model.parameters()).device
    parts = z.flatten(0, 1).split(512)
    decoded = torch.cat([model.decode(part.to(device)).cpu() for part in parts])
    strokes = (decoded * 255).round().to(torch.uint8)
    return strokes.view(cfg.classes, drawings, *train_images.shape[2:]), pairs


def with_generated_tasks(
    real: EpisodeSampler,
    cfg: GeneratedTasks,
    ctx: StageContext,
    info: dict[str, Any],
    seed: int,
) -> tuple[MixedEpisodeSampler, dict[str, Any]]:
    """The meta-training sampler over the real split plus `cfg.classes` generated ones,
    and a preview of a few of them (with a drawing of each source class) for model.pt."""
    where = f"experiments.{ctx.experiment.name}.train.generated_tasks"
    model = load_generator(ctx, cfg, info, where).to(real.images.device)
    generated, pairs = generate_classes(model, real.images, cfg, seed)
    shown = pairs[:PREVIEW_CLASSES]
    preview = {
        "kind": cfg.kind,
        "classes": generated[:PREVIEW_CLASSES].clone(),
        "sources": real.images[shown, 0].cpu(),  # (shown, 2, 1, H, W): each source's 1st drawing
    }
    return MixedEpisodeSampler(real, generated, cfg.fraction), preview
