"""Latent Embedding Optimization (Rusu et al. 2019), on the frozen features of a
pre-trained Conv-4 (the experiment it `needs`, methods/pretrain.py).

Per task: an encoder maps each support example's features to a code, a relation network
over all pairs of codes gives each class a Gaussian in latent space, and a class's latent
code z is sampled from it (reparameterised). The decoder, a `WeightGenerator`
(hyper/generated.py), maps each class's code to that class's weight row of the
classifier (`ClassScores`, run through `functional_call`), so a head has as many classes
as the episode. The inner loop takes gradient steps on the support loss in latent space,
with a meta-learned step size per latent dimension, then optional fine-tuning steps on
the decoded weights, with a learned step size per feature. The outer loss is the query
loss after adaptation plus the paper's penalties (eq. 10): β KL(q(z | support) ‖ N(0, I)),
γ ‖stop-gradient(z′) − z‖² (the encoder penalty), λ₁ ‖encoder, relation, decoder
weights‖² and λ₂ ‖C_d − I‖², C_d the correlation of the decoder's latent directions.

Checked against the reference (google-deepmind/leo, model.py): the same losses, scales
and clipping, but for two choices of form: a spread is the softplus of the network's
output, not exp(s) − 1 floored at 1e-10, and the KL is computed in closed form, not
estimated from the one sample drawn.

Randomness (feature dropout, the sampled codes and weights) is drawn from a generator
seeded by the meta-iteration (`on_iteration`), so a resumed run repeats an uninterrupted
one exactly; at meta-test the codes and weights are their means.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from hypermeta.config import StrictModel
from hypermeta.data.episodes import Episodes, seeded_generator
from hypermeta.errors import HypermetaError
from hypermeta.hyper.generated import WeightGenerator, take_parameters
from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.fewshot_base import BatchNormRegime, FewShotLearner
from hypermeta.methods.gradient.inner_loop import Weights, adapt
from hypermeta.nn.conv4 import Conv4


class LEOConfig(StrictModel):
    """Defaults: the reference implementation's flags (google-deepmind/leo, config.py);
    its README's tuned values per benchmark are set in params.yaml."""

    hidden: int = Field(64, gt=0, description="Conv-4 filters of the pre-trained encoder")
    latent: int = Field(64, gt=0, description="latent code size per class")
    inner_steps: int = Field(5, ge=0, description="latent-space steps")
    finetune_steps: int = Field(5, ge=0, description="weight-space fine-tuning steps")
    inner_lr: float = Field(1.0, gt=0, description="initial latent step size (learned)")
    finetune_lr: float = Field(0.001, gt=0, description="initial fine-tuning step (learned)")
    dropout: float = Field(0.5, ge=0, lt=1, description="on the features, in meta-training")
    kl_weight: float = Field(0.001, ge=0, description="β, on the KL averaged per dimension")
    encoder_penalty: float = Field(1e-9, ge=0, description="γ on ‖stop-grad(z′) − z‖² (mean)")
    l2_weight: float = Field(1e-8, ge=0, description="λ₁ on ½‖encoder, relation, decoder weights‖²")
    orthogonality_weight: float = Field(0.001, ge=0, description="λ₂ on the decoder")
    gradient_clip: float | None = Field(
        0.1, gt=0, description="clip meta-gradients by value and by norm (None: not)"
    )


class ClassScores(nn.Module):
    """The classifier LEO generates: a query's logit for class n is features · w_n. Its
    `weight` is one row per class; generated, it is (…, N, D) for N classes."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.transpose(-1, -2)


@dataclass
class Codes:
    """The decoder's condition: latent codes (…, N, latent) and the standard-normal noise
    that samples the weights from their Gaussian (None: the means)."""

    latents: torch.Tensor
    noise: torch.Tensor | None = None


class LatentDecoder(WeightGenerator):
    """Latent code of a class → the mean and spread of its weight row; a linear map with
    no bias, whose weight the orthogonality penalty keeps well conditioned."""

    def __init__(self, target_shapes: dict[str, torch.Size], latent: int) -> None:
        super().__init__(target_shapes)
        self.features = target_shapes["weight"][-1]
        self.linear = nn.Linear(latent, 2 * self.features, bias=False)

    def forward(self, condition: Codes) -> dict[str, torch.Tensor]:
        mean, spread = self.linear(condition.latents).split(self.features, dim=-1)
        if condition.noise is None:
            return {"weight": mean}
        return {"weight": mean + F.softplus(spread) * condition.noise}


def kl_to_prior(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std²) ‖ N(0, 1)) averaged over codes and latent dimensions: the
    reference's scale (its sampled estimate is a mean over every element), which its
    tuned β assumes."""
    kl = 0.5 * (mean.pow(2) + std.pow(2) - 1) - std.log()
    return kl.mean()


def orthogonality(weight: torch.Tensor) -> torch.Tensor:
    """Mean squared distance from I of the correlation matrix of `weight`'s columns (the
    decoder's latent directions): zero exactly when they are orthogonal."""
    directions = weight / weight.norm(dim=0, keepdim=True).clamp_min(1e-12)
    correlation = directions.transpose(0, 1) @ directions
    eye = torch.eye(len(correlation), device=weight.device, dtype=weight.dtype)
    return (correlation - eye).pow(2).mean()


def squared_norm(module: nn.Module) -> torch.Tensor:
    """½ the squared norm of the module's weights, as TensorFlow's l2_regularizer (the
    reference's λ₁ term)."""
    return sum(p.pow(2).sum() for name, p in module.named_parameters() if "weight" in name) / 2


def support_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over every support example of every task: each task's
    gradient is its own summed loss's, as the reference's inner steps take (the gradient
    of its per-example losses), so a meta-batch adapts together at the reference's
    step sizes."""
    return F.cross_entropy(scores.transpose(1, 2), labels, reduction="sum")


class LEO(FewShotLearner):
    batchnorm_regimes: ClassVar[tuple[BatchNormRegime, ...]] = ("running_stats",)

    def __init__(self, features: Conv4, config: LEOConfig) -> None:
        super().__init__()
        self.config = config
        self.features = features.requires_grad_(False)  # frozen: pre-trained (start_from)
        size, latent = features.embedding_size, config.latent
        # no biases, as the reference's encoder, relation network and decoder
        self.encoder = nn.Linear(size, latent, bias=False)
        self.relation = nn.Sequential(
            nn.Linear(2 * latent, 2 * latent, bias=False),
            nn.ReLU(),
            nn.Linear(2 * latent, 2 * latent, bias=False),
            nn.ReLU(),
            nn.Linear(2 * latent, 2 * latent, bias=False),
        )
        self.head = ClassScores(size)
        self.decoder = LatentDecoder(take_parameters(self.head, ["weight"]), latent)
        self.inner_lr = nn.Parameter(torch.full((latent,), config.inner_lr))
        self.finetune_lr = nn.Parameter(torch.full((size,), config.finetune_lr))
        self.inner_steps = config.inner_steps
        self.noise: torch.Generator | None = None  # seeded per meta-iteration

    # ---- the frozen encoder -----------------------------------------------------------
    def train(self, mode: bool = True) -> LEO:
        super().train(mode)
        self.features.eval()  # its running batch-norm statistics stay the pre-trained ones
        return self

    def image_encoder(self) -> nn.Module | None:
        return self.features

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, M, D) features of images (B, M, C, H, W), or the features as given."""
        if x.dim() == 3:
            return x
        with torch.no_grad():
            return self.features(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    # ---- randomness ---------------------------------------------------------------------
    def on_iteration(self, iteration: int, total: int) -> None:
        self.noise = seeded_generator("leo", iteration)

    def standard_normal(self, like: torch.Tensor) -> torch.Tensor | None:
        if not self.training:
            return None
        draw = torch.randn(like.shape, generator=self.noise or torch.Generator())
        return draw.to(like.device, like.dtype)

    def dropped(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.config.dropout == 0:
            return x
        keep = 1 - self.config.dropout
        mask = torch.rand(x.shape, generator=self.noise or torch.Generator()) < keep
        return x * mask.to(x.device, x.dtype) / keep

    # ---- one meta-batch -----------------------------------------------------------------
    def latent_distribution(
        self, support: torch.Tensor, labels: torch.Tensor, n_way: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each class's Gaussian in latent space, (B, N, latent) means and deviations:
        the relation network over every pair of support codes, averaged over the pairs
        whose first member is of that class."""
        codes = self.encoder(self.dropped(support))
        count = codes.shape[1]
        pairs = torch.cat(
            [
                codes.unsqueeze(2).expand(-1, -1, count, -1),
                codes.unsqueeze(1).expand(-1, count, -1, -1),
            ],
            dim=-1,
        )
        per_example = self.relation(pairs).mean(2)  # (B, N·K, 2 latent)
        one_hot = F.one_hot(labels, n_way).to(per_example.dtype)  # (B, N·K, N)
        per_class = one_hot.transpose(1, 2) @ per_example / one_hot.sum(1).unsqueeze(-1)
        mean, spread = per_class.chunk(2, dim=-1)
        return mean, F.softplus(spread)

    def weights(self, latents: torch.Tensor) -> torch.Tensor:
        """The decoded weight rows (B, N, D), sampled in meta-training."""
        noise_like = latents.new_empty(*latents.shape[:-1], self.decoder.features)
        return self.decoder(Codes(latents, self.standard_normal(noise_like)))["weight"]

    def scores(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.head, {"weight": weight}, (x,))

    def adapt(self, episodes: Episodes) -> dict[str, torch.Tensor]:
        """The task's adaptation: initial and adapted latent codes, the Gaussian they were
        drawn from, the fine-tuned weights, and the query features."""
        support = self.encode(episodes.support_x)
        query = self.encode(episodes.query_x)
        labels = episodes.support_y
        mean, std = self.latent_distribution(support, labels, episodes.n_way)
        noise = self.standard_normal(mean)
        latents = mean if noise is None else mean + std * noise
        second_order = self.training

        def latent_loss(fast: Weights, step: int) -> torch.Tensor:
            return support_loss(self.scores(self.weights(fast["z"]), self.dropped(support)), labels)

        adapted = adapt(
            {"z": latents},
            latent_loss,
            lambda fast, grads, step: {"z": fast["z"] - self.inner_lr * grads["z"]},
            self.inner_steps,
            second_order,
            vmapped=False,
        )[-1]["z"]

        def weight_loss(fast: Weights, step: int) -> torch.Tensor:
            return support_loss(self.scores(fast["w"], self.dropped(support)), labels)

        weight = adapt(
            {"w": self.weights(adapted)},
            weight_loss,
            lambda fast, grads, step: {"w": fast["w"] - self.finetune_lr * grads["w"]},
            self.config.finetune_steps,
            second_order,
            vmapped=False,
        )[-1]["w"]
        return {
            "latents": latents,
            "adapted": adapted,
            "mean": mean,
            "std": std,
            "weight": weight,
            "query": query,
        }

    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        task = self.adapt(episodes)
        return self.scores(task["weight"], self.dropped(task["query"]))

    def feature_logits(self, episodes: Episodes) -> torch.Tensor:
        return self.query_logits(episodes)

    def test_logits(self, episodes: Episodes) -> torch.Tensor:
        with torch.enable_grad():  # the inner loops differentiate; no outer graph is kept
            return self.query_logits(episodes).detach()

    # ---- the outer loss -------------------------------------------------------------------
    def penalties(self, task: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The paper's regularisers, unweighted (module docstring)."""
        return {
            "kl": kl_to_prior(task["mean"], task["std"]),
            "encoder_penalty": (task["adapted"].detach() - task["latents"]).pow(2).mean(),
            "l2": sum(squared_norm(m) for m in (self.encoder, self.relation, self.decoder)),
            "orthogonality": orthogonality(self.decoder.linear.weight),
        }

    def loss(self, episodes: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
        task = self.adapt(episodes)
        logits = self.scores(task["weight"], self.dropped(task["query"]))
        terms = self.penalties(task)
        c = self.config
        loss = (
            F.cross_entropy(logits.flatten(0, 1), episodes.query_y.flatten())
            + c.kl_weight * terms["kl"]
            + c.encoder_penalty * terms["encoder_penalty"]
            + c.l2_weight * terms["l2"]
            + c.orthogonality_weight * terms["orthogonality"]
        )
        return loss, logits

    def meta_step(self, episodes: Episodes, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        loss, logits = self.loss(episodes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if (clip := self.config.gradient_clip) is not None:  # as the reference: value, norm
            trained = [p for p in self.parameters() if p.requires_grad]
            nn.utils.clip_grad_value_(trained, clip)
            nn.utils.clip_grad_norm_(trained, clip)
        optimizer.step()
        accuracy = (logits.argmax(-1) == episodes.query_y).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item()}

    # ---- what the plots read --------------------------------------------------------------
    def task_codes(self, episodes: Episodes) -> torch.Tensor:
        """(B, latent): each episode's mean adapted class code."""
        with torch.enable_grad():
            return self.adapt(episodes)["adapted"].mean(1).detach()

    def generated_head(self, episodes: Episodes) -> torch.Tensor:
        """(B, N, D): the decoded, fine-tuned per-class weight rows."""
        with torch.enable_grad():
            return self.adapt(episodes)["weight"].detach()

    @contextmanager
    def with_inner_steps(self, steps: int) -> Iterator[None]:
        """Temporarily `steps` latent inner steps (accuracy against inner steps)."""
        kept, self.inner_steps = self.inner_steps, steps
        try:
            yield
        finally:
            self.inner_steps = kept


def start_from(learner: nn.Module, needed: dict[str, nn.Module]) -> None:
    """Freeze the encoder of the one pre-trained experiment LEO needs."""
    encoders = [
        m.encoder for m in needed.values() if isinstance(getattr(m, "encoder", None), Conv4)
    ]
    if len(needed) != 1 or len(encoders) != 1:
        raise HypermetaError(
            "leo freezes the Conv-4 encoder of one pre-trained experiment; list exactly one "
            "under needs, e.g. needs: [pretrain_omniglot]."
        )
    try:
        learner.features.load_state_dict(encoders[0].state_dict())
    except RuntimeError:
        raise HypermetaError(
            "the pre-trained encoder's width differs from leo's model.hidden; make them equal."
        ) from None


def build(config: LEOConfig, data_info: dict[str, Any]) -> LEO:
    channels, height, _ = data_info["image_shape"]
    return LEO(Conv4(channels, config.hidden, image_size=height), config)


register(
    MethodSpec(
        name="leo",
        kind="fewshot",
        model_config=LEOConfig,
        build=build,
        summary="LEO: per-class latent codes adapted by gradient, decoded into the "
        "classifier's weights, on frozen pre-trained features",
        start_from=start_from,
    )
)
