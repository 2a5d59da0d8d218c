"""Generative models of Omniglot drawings, engine kind `generative` (VAE, GANs, DAGAN):
trained on the meta-train classes only, evaluated on sample quality.

Training reads the `train` split alone (on Lake's split the background alphabets less
the 3 held out for validation); the validation rows score the `val` split's held-out
background alphabets without updating anything, and no evaluation alphabet (the `test`
split) is read before the evaluate stage. Each iteration draws its batch and its noise
from a generator seeded by (seed, iteration), so a resumed run repeats an uninterrupted
one bit for bit.

Evaluation: for a model with a likelihood bound (the VAE) the importance-weighted bound
on log p(x) of test-alphabet drawings (Burda et al. 2016, `eval.importance_samples`
samples; the ELBO too), in nats per image with a 95% CI over images; for every model
the Fréchet distance between its prior samples (a DAGAN: samples conditioned on the
floor's second set of real drawings) and meta-train drawings on the features of a Conv-4
classifier trained here on the meta-train classes (`engine/sample_quality.py`; not the
Inception-based FID), beside the same distance between two disjoint sets of real
meta-train drawings (the floor a perfect generator would reach at this sample size); for
every model that conditions on a drawing (VAE, DAGAN) the same-class judgement of its
samples of test-alphabet drawings (`sample_quality.same_class_judgement`).

A model that `needs_condition` (DAGAN) trains on same-class pairs of meta-train drawings,
drawn from the same seeded generator as the other models' batches.

`load_generative(model_path)` gives a trained model back for other stages (support-set
augmentation: `GenerativeModel.samples_like`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from hypermeta.config import StrictModel
from hypermeta.data.episodes import seeded_generator
from hypermeta.data.prepare import load_manifest, load_split
from hypermeta.engine import register
from hypermeta.engine.base import Engine, StageContext
from hypermeta.engine.checkpoint import load_saved
from hypermeta.engine.classification import build_model
from hypermeta.engine.device import DeviceName, adam, resolve_device
from hypermeta.engine.loop import Row, Training, fit_stage, on_cpu, save_trained
from hypermeta.engine.sample_quality import (
    FeatureClassifierConfig,
    SameClassConfig,
    features,
    frechet_distance,
    same_class_judgement,
    train_feature_classifier,
)
from hypermeta.errors import HypermetaError
from hypermeta.methods.generative_base import GenerativeModel, binarised
from hypermeta.stats import mean_interval


class GenerativeTrain(StrictModel):
    iterations: int = Field(20000, gt=0, description="optimizer steps (each model's own)")
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-4, gt=0, description="Adam lr of every optimizer")
    betas: list[float] = Field(
        [0.5, 0.999], min_length=2, max_length=2, description="Adam betas (GAN: 0.5, 0.999)"
    )
    log_every: int = Field(500, gt=0, description="iterations per history row")
    checkpoint_every: int = Field(1000, gt=0, description="iterations between checkpoints")
    val_images: int = Field(512, gt=0, description="held-out val-alphabet drawings per row")
    seed: int = 0
    device: DeviceName = "auto"


class GenerativeEval(StrictModel):
    test_images: int = Field(2000, gt=0, description="test-alphabet drawings for the bound")
    importance_samples: int = Field(
        50, gt=0, description="k of the importance-weighted bound (1: the ELBO)"
    )
    fd_samples: int = Field(2000, gt=1, description="generated (and real) images per distance")
    feature_classifier: FeatureClassifierConfig = FeatureClassifierConfig()
    same_class: SameClassConfig = Field(
        SameClassConfig(), description="the same-class judgement of samples_like (VAE, DAGAN)"
    )
    seed: int = 0
    confidence: float = Field(0.95, gt=0, lt=1)


def drawings(data_dir: Path, split: str, where: str) -> torch.Tensor:
    """A split's drawings, (classes, drawings, 1, H, W) uint8; refuses a dataset that
    is not of drawings per class (Omniglot's layout)."""
    images = load_split(data_dir, split)["images"]
    if images.dim() != 5:
        raise HypermetaError(
            f"{where}: the generative engine trains on drawings per class (Omniglot); "
            f"{data_dir.name} holds images of shape {tuple(images.shape)}; use dataset: omniglot."
        )
    return images


def seeded_subset(images: torch.Tensor, n: int, *key: object) -> torch.Tensor:
    """min(n, all) of `images` (N, ...), chosen by a permutation seeded by `key`."""
    order = torch.randperm(len(images), generator=seeded_generator(*key))
    return images[order[:n]]


def same_class_pairs(images: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n pairs of two different drawings of one class, (n, 2, ...) from `images` (classes,
    drawings, ...): a class, a first drawing and a different second one per pair."""
    classes, per_class = images.shape[:2]
    if per_class < 2:
        raise HypermetaError(
            f"same-class pairs need two drawings of a class; these classes have {per_class}."
        )
    label = torch.randint(classes, (n,), generator=generator)
    first = torch.randint(per_class, (n,), generator=generator)
    second = (first + torch.randint(1, per_class, (n,), generator=generator)) % per_class
    return images[label.unsqueeze(1), torch.stack([first, second], 1)]


def generated_images(
    model: GenerativeModel, n: int, conditions: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """n drawings of the model: prior samples, or for a model with no prior
    (`needs_condition`, DAGAN) one drawing like each of the first n `conditions`
    (N, 1, H, W; taken again from the first if N < n)."""
    if model.needs_condition:
        chosen = conditions[torch.arange(n) % len(conditions)]
        return model.samples_like(chosen, 1, generator)[:, 0]
    return model.sample(n, generator)


def load_generative(model_path: Path) -> tuple[GenerativeModel, dict[str, Any]]:
    """A trained generative model (eval mode, CPU) and its saved file's contents."""
    saved = load_saved(model_path)
    model = build_model(saved["experiment"], saved["data_info"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


class GenerativeTraining(Training):
    """Seeded batches of binarised meta-train drawings, one `train_step` each; a row
    (the training losses since the last, the losses on val-alphabet drawings) every
    `log_every` iterations, a checkpoint every `checkpoint_every`."""

    step_key = "iteration"

    def __init__(self, ctx: StageContext) -> None:
        exp = ctx.experiment
        cfg: GenerativeTrain = exp.train
        self.cfg, self.exp = cfg, exp
        where = f"experiments.{exp.name}"
        self.device = resolve_device(cfg.device, f"{where}.train.device")
        self.info = load_manifest(ctx.data_dir)
        torch.manual_seed(cfg.seed)
        self.model: GenerativeModel = build_model(exp.section, self.info).to(self.device)
        # the meta-train classes only: nothing of an evaluation alphabet reaches training
        train = binarised(drawings(ctx.data_dir, "train", where)).to(self.device)
        val = drawings(ctx.data_dir, "val", where)
        if self.model.needs_condition:  # kept per class, for same-class pairs
            self.images = train
            pairs = same_class_pairs(val, cfg.val_images, seeded_generator("val", cfg.seed))
            self.val = binarised(pairs).to(self.device)
        else:
            self.images = train.flatten(0, 1)
            val = seeded_subset(val.flatten(0, 1), cfg.val_images, "val", cfg.seed)
            self.val = binarised(val).to(self.device)
        self.optimizers = {
            name: adam(params, cfg.lr, betas=tuple(cfg.betas))
            for name, params in self.model.parameter_groups().items()
        }
        self.label, self.rounds, self.steps = exp.name, 1, cfg.iterations
        self.row_every, self.checkpoint_every = cfg.log_every, cfg.checkpoint_every
        self.window: dict[str, float] = {"n": 0}  # loss sums since the last row

    def state(self, round: int, step: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "iteration": step,
            "window": self.window,  # a row after a resume averages every iteration
        }

    def restore(self, state: dict[str, Any]) -> tuple[int, int]:
        self.model.load_state_dict(state["model"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.window = state["window"]
        return divmod(state["iteration"], self.steps)

    def resumed(self, round: int, step: int) -> str:
        return f"after iteration {round * self.steps + step} of {self.steps}"

    def begin_round(self, round: int, step: int) -> str:
        self.began = time.perf_counter()
        return "training"

    def step(self, round: int, step: int) -> None:
        self.model.train()
        self.model.on_iteration(step, self.steps)
        generator = seeded_generator("generative", self.cfg.seed, step)
        losses = self.model.train_step(self.batch(generator), self.optimizers, generator)
        for key, value in losses.items():
            self.window[key] = self.window.get(key, 0.0) + value
        self.window["n"] += 1

    def batch(self, generator: torch.Generator) -> torch.Tensor:
        """`batch_size` training drawings, or same-class pairs for a model that needs them."""
        if self.model.needs_condition:
            return same_class_pairs(self.images, self.cfg.batch_size, generator)
        index = torch.randint(len(self.images), (self.cfg.batch_size,), generator=generator)
        return self.images[index]

    def row(self, round: int, done: int) -> Row:
        self.model.eval()
        val = self.model.validation(self.val, seeded_generator("validation", self.cfg.seed))
        n = self.window.pop("n")
        row = {
            "epoch": done,  # the x axis of save_curves: here, iterations
            "iteration": done,
            **{f"train_{key}": total / n for key, total in self.window.items()},
            **{f"val_{key}": value for key, value in val.items()},
            "seconds": time.perf_counter() - self.began,
        }
        self.window = {"n": 0}
        return row

    def line(self, row: Row) -> str:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith("val_"))
        return f"iteration {row['iteration']}/{self.steps}: {shown}"

    def saved(self) -> dict[str, Any]:
        return {
            "experiment": self.exp.section,
            "data_info": self.info,
            "state_dict": on_cpu(self.model.state_dict()),
        }


class GenerativeEngine(Engine):
    kind = "generative"
    train_config = GenerativeTrain
    eval_config = GenerativeEval
    compare_columns = {
        "Fréchet distance (Conv-4 features, not FID)": "frechet_distance",
        "real-vs-real floor": "frechet_real_floor",
        "test NLL bound (nats/image)": "test_nll_bound",
        "same class, samples (N-way NCM)": "same_class_accuracy_generated",
        "same class, real drawings": "same_class_accuracy_real",
    }
    compare_note = (
        "The Fréchet distance is computed on the features of a Conv-4 classifier trained "
        "here on the meta-train classes, not on Inception features: it is not FID, and is "
        "comparable only between these experiments. The floor is the same distance between "
        "two disjoint sets of real meta-train drawings of the same size. The NLL bound "
        "(VAE only) is the importance-weighted bound on test-alphabet drawings. Same class (models "
        "that condition on a drawing: VAE, DAGAN): the share of samples of a test-alphabet "
        "drawing whose classifier features are nearest the mean of their source class among "
        "N test classes (chance 1/N), beside the share of real held-out drawings so judged. "
        "A DAGAN's Fréchet distance is of samples conditioned on the floor's second set."
    )

    def train(self, ctx: StageContext) -> None:
        training = GenerativeTraining(ctx)
        history = fit_stage(training, ctx)
        save_trained(ctx.model_path, training.saved(), history, ctx.history_path)

    def trained_model(self, ctx: StageContext) -> tuple[torch.nn.Module, str]:
        model, _ = load_generative(ctx.model_path)
        return model, (
            "model.sample(n, torch.Generator().manual_seed(s)) → (n, 1, 28, 28) drawings in "
            "[0, 1], strokes 1; model.samples_like(images, m, generator) → (B, m, 1, 28, 28) "
            "new drawings of each image's class (None for an unconditional GAN; a DAGAN "
            "has samples_like only); images binarised "
            "(pixel > 127 → 1, strokes light)"
        )

    def evaluate(self, ctx: StageContext) -> dict[str, Any]:
        exp = ctx.experiment
        cfg: GenerativeEval = exp.eval
        where = f"experiments.{exp.name}"
        device = resolve_device(exp.train.device, f"{where}.train.device")
        model, _ = load_generative(ctx.model_path)
        model.to(device)
        metrics: dict[str, Any] = {"confidence": cfg.confidence}
        train = drawings(ctx.data_dir, "train", where)
        classifier, accuracy = train_feature_classifier(train, cfg.feature_classifier, device)
        with torch.no_grad():
            if hasattr(model, "importance_weighted_bound"):
                metrics |= likelihood_bounds(model, ctx.data_dir, cfg, where, device)
            real = binarised(seeded_subset(train.flatten(0, 1), 2 * cfg.fd_samples, cfg.seed))
            real = real.to(device)
            real_features = features(classifier, real)
            half = len(real_features) // 2
            # a DAGAN draws from the floor's half, disjoint from the half it is compared with
            generator = seeded_generator("samples", cfg.seed)
            generated = generated_images(model, cfg.fd_samples, real[half:], generator)
            fake_features = features(classifier, generated)
        metrics |= {
            "frechet_distance": frechet_distance(fake_features, real_features[:half]),
            "frechet_real_floor": frechet_distance(real_features[half:], real_features[:half]),
            "fd_samples": cfg.fd_samples,
            "feature_classifier_accuracy": accuracy,
            "feature_classifier_classes": cfg.feature_classifier.classes or len(train),
        }
        test = drawings(ctx.data_dir, "test", where)
        judged = same_class_judgement(
            classifier, test, model.samples_like, cfg.same_class, cfg.confidence
        )
        return metrics | (judged or {})


def likelihood_bounds(
    model: GenerativeModel, data_dir: Path, cfg: GenerativeEval, where: str, device: torch.device
) -> dict[str, Any]:
    """The k-sample importance-weighted bound and the ELBO on test-alphabet drawings, as
    negative log-likelihoods (nats per image), each with its CI over images."""
    test = drawings(data_dir, "test", where).flatten(0, 1)
    images = binarised(seeded_subset(test, cfg.test_images, "test", cfg.seed)).to(device)
    bound = torch.cat(
        [
            model.importance_weighted_bound(batch, cfg.importance_samples, generator)
            for batch, generator in batches_with_generators(images, 100, "iwae", cfg.seed)
        ]
    )
    elbo = torch.cat(
        [
            model.importance_weighted_bound(batch, 1, generator)
            for batch, generator in batches_with_generators(images, 100, "elbo", cfg.seed)
        ]
    )
    metrics: dict[str, Any] = {
        "importance_samples": cfg.importance_samples,
        "test_images": len(images),
    }
    for name, values in (("test_nll_bound", -bound), ("test_negative_elbo", -elbo)):
        metrics[name], metrics[f"{name}_ci95"] = mean_interval(values.cpu(), cfg.confidence)
    return metrics


def batches_with_generators(images: torch.Tensor, size: int, *key: object):
    """Batches of `images`, each with its own seeded generator (the batch size and the
    order of batches do not change a batch's noise)."""
    for i, batch in enumerate(images.split(size)):
        yield batch, seeded_generator(*key, i)


register(GenerativeEngine())
