"""The interface of every few-shot method (engine kind `fewshot`), in the spirit of
easyfsl's abstract few-shot classifier: the engine samples batched episodes, the method
turns them into a loss (meta-training) and query logits (evaluation, `predict` CLI)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from typing import ClassVar, Literal

import torch
from torch import nn

from hypermeta.data.episodes import Episodes
from hypermeta.errors import HypermetaError

# How batch norm normalises at meta-test (`eval.batchnorm`, recorded with every result):
# one name, one meaning. A learner lists those it implements in `batchnorm_regimes`.
BatchNormRegime = Literal["transductive", "per_query", "running_stats", "per_step_stats"]
BATCHNORM_REGIMES: dict[str, str] = {
    "transductive": "the statistics of the batch being normalised: a task's queries "
    "together, so a query's answer depends on the other queries",
    "per_query": "each query with the support set plus itself alone (the non-transductive "
    "protocol of learners without running statistics)",
    "running_stats": "running statistics accumulated during meta-training, each query on its own",
    "per_step_stats": "running statistics of the query batches per inner step, kept during "
    "meta-training (MAML++), each query on its own",
}
# A retired name (it meant a different regime for each learner) → what to write instead.
RETIRED_REGIMES = {
    "running": "'running' is no longer a batch-norm regime; write running_stats for "
    "ProtoNet's running statistics, per_query for MAML, FOMAML, Meta-SGD and Reptile (the "
    "support set plus one query), or per_step_stats for MAML++'s per-step statistics",
}


def embedded_per_episode(encoder: nn.Module, episodes: Episodes) -> Episodes:
    """`episodes` with each image replaced by its `encoder` features. One forward per
    episode: batch-norm statistics (training, transductive test) must come from that
    episode alone, never from the other tasks of a meta-batch."""
    features = []
    for support_x, query_x in zip(episodes.support_x, episodes.query_x, strict=True):
        images = torch.cat([support_x, query_x])
        if images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        features.append(encoder(images))
    support_size = episodes.support_x.shape[1]
    stacked = torch.stack(features)
    return replace(episodes, support_x=stacked[:, :support_size], query_x=stacked[:, support_size:])


class FewShotLearner(nn.Module, ABC):
    """A few-shot method. Subclasses implement `query_logits`; the defaults give the
    usual cross-entropy meta-objective and one optimizer step per meta-batch.

    How the `fewshot` engine (engine/fewshot.py) drives a learner, so a new method plugs
    in without engine changes:
    - Building: `MethodSpec.build(model_config, data_info)`; `data_info` is the prepared
      manifest (`image_shape`, `mean`, `std`, ...). The engine does not pass the number of
      ways: a learner with a fixed-size output head takes `n_way` in its own model config
      and sets `self.max_way = n_way`. The engine then refuses `train.n_way > max_way`,
      evaluates only the settings with at most `max_way` ways (the others are skipped and
      said so), and `hypermeta fewshot predict` refuses support folders with more classes.
      With fewer ways than the head, `query_logits` returns the first `episodes.n_way`
      columns. `max_way = None` (the default) takes any number of ways.
    - Training: for each meta-batch the engine calls `on_iteration(i, total)` (schedules
      such as MAML++'s derivative-order annealing live there), then `meta_step`.
    - Evaluation, validation and `predict` call `test_logits` inside
      `meta_test(batchnorm)`, `batchnorm` one of the learner's `batchnorm_regimes` (the
      engine refuses others before training); queries' labels are never read there
      (`predict` passes zeros).
    - Figures (plots/fewshot.py, the visualize stage): optional hooks, each None by
      default meaning "not supported", called inside `meta_test` under no_grad:
      `task_codes` (a code per episode, drawn in 2-D by PCA), `generated_head` and
      `generated_filters` (generated weights of two test tasks side by side),
      `attention_maps` (which earlier step each step of a test episode attends to, per
      attention layer), and `with_inner_steps` (accuracy against the number of inner
      steps, also the eval option `eval.inner_steps_sweep`).
    """

    max_way: int | None = None
    # The batch-norm regimes `meta_test` implements: this default's, for nn.BatchNorm layers.
    batchnorm_regimes: ClassVar[tuple[BatchNormRegime, ...]] = ("transductive", "running_stats")

    @abstractmethod
    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        """(B, N·Q, N) logits for the queries given the support sets. Gradient-based
        learners adapt inside (and need autograd even at evaluation)."""

    def image_encoder(self) -> nn.Module | None:
        """The encoder through which alone test logits see each image, in the current mode
        (inside `meta_test`), or None. When there is one, the engine encodes every image
        of a split once and calls `feature_logits` on episodes of those features, instead
        of `test_logits` encoding each image once per episode. None (the default) for
        learners that adapt or normalise a batch together."""
        return None

    def feature_logits(self, episodes: Episodes) -> torch.Tensor:
        """(B, N·Q, N) logits from episodes of `image_encoder` features."""
        raise NotImplementedError(f"{type(self).__name__} has no image_encoder")

    def task_codes(self, episodes: Episodes) -> torch.Tensor | None:
        """(B, d): the code each episode's support set gives the learner (a task code, LEO's
        latents pooled), or None when it has none."""
        return None

    def generated_head(self, episodes: Episodes) -> torch.Tensor | None:
        """(B, N, D): the classification head's weight vector per class, as generated for
        each episode, or None when the learner generates no head."""
        return None

    def generated_filters(self, episodes: Episodes) -> torch.Tensor | None:
        """(B, out, in, kh, kw): a conv kernel as generated for each episode, or None."""
        return None

    def attention_maps(self, episodes: Episodes) -> list[torch.Tensor] | None:
        """Per attention layer, (B, S + Q, S + Q): the weight each step of an episode read
        as a sequence (the S support steps, then the Q queries, each query after the
        support set alone) gives each step, rows summing to 1, zero on later steps; or
        None for a learner without attention over the episode."""
        return None

    def with_inner_steps(self, steps: int) -> AbstractContextManager[None] | None:
        """A context in which test logits take `steps` inner steps (0: the initial
        prediction), or None (the default) for a learner without inner steps."""
        return None

    def loss(self, episodes: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.query_logits(episodes)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), episodes.query_y.flatten())
        return loss, logits

    def on_iteration(self, iteration: int, total: int) -> None:
        """Called before meta-iteration `iteration` (0-based) of `total`; a no-op by default."""

    def before_update(self) -> None:
        """Called by `meta_step` between the backward pass and the optimizer step
        (gradient clipping); a no-op by default."""

    def test_logits(self, episodes: Episodes) -> torch.Tensor:
        """Detached query logits at meta-test. Autograd stays on so gradient-based learners
        can adapt; learners that never differentiate at test override this with no_grad."""
        with torch.enable_grad():
            return self.query_logits(episodes).detach()

    def check_batchnorm(self, regime: str, where: str = "the batch-norm regime") -> None:
        """One sentence naming `where` and the supported regimes if this learner cannot
        meta-test under `regime`."""
        if regime in RETIRED_REGIMES:
            raise HypermetaError(f"{where}: {RETIRED_REGIMES[regime]}.")
        if regime not in self.batchnorm_regimes:
            raise HypermetaError(
                f"{where} is {regime!r}, which {type(self).__name__} does not support; use "
                f"one of {', '.join(self.batchnorm_regimes)}."
            )

    @contextmanager
    def meta_test(self, batchnorm: BatchNormRegime) -> Iterator[None]:
        """Evaluation mode with batch norm as `batchnorm` says; restores the modes after.

        "transductive" puts batch-norm layers in training mode without tracking, so they
        normalise with the current batch's statistics and leave the running ones untouched;
        "running_stats" normalises with the running ones (eval mode)."""
        self.check_batchnorm(batchnorm)
        was_training = self.training
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        tracking = [m.track_running_stats for m in norms]
        self.eval()
        if batchnorm == "transductive":
            for norm in norms:
                norm.train()
                norm.track_running_stats = False
        try:
            yield
        finally:
            for norm, tracked in zip(norms, tracking, strict=True):
                norm.track_running_stats = tracked
            self.train(was_training)

    def meta_step(self, episodes: Episodes, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One outer-loop update; Reptile and similar methods override this."""
        loss, logits = self.loss(episodes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.before_update()
        optimizer.step()
        accuracy = (logits.argmax(-1) == episodes.query_y).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item()}
