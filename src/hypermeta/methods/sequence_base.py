"""Sequence learners (MANN and its LSTM baseline, Santoro et al. 2016): a learner that
reads labelled examples one at a time, at step t the image x_t and the label y_{t-1} of the
step before (none at the first step), and predicts y_t before it is shown. It implements
`sequence_logits`; this frame gives it the few-shot engine's interface:

- meta-training: each episode's support set shuffled into a sequence (data/sequences.py;
  the order seeded by the meta-iteration, so a resumed run repeats it), cross-entropy
  at every step, the paper's loss. The episodes' queries are not trained on.
- `query_logits` (validation, N-way K-shot evaluation, `predict`): each query is the step
  after the support set in its own sequence, the support set in one fixed shuffled order:
  a query sees the labelled support set, never its own label nor another query.
- accuracy by instance (`eval.by_instance`, engine/fewshot.py): `sequence_logits` on fixed
  test sequences, scored at each presentation of a class.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torch.nn import functional as F

from hypermeta.data.episodes import Episodes, seeded_generator
from hypermeta.data.sequences import Sequences, shuffled_support
from hypermeta.methods.fewshot_base import BatchNormRegime, FewShotLearner


def previous_labels(y: torch.Tensor, n_way: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, n_way): at step t the one-hot label of step t-1, zeros at the first step."""
    one_hot = F.one_hot(y, n_way).to(dtype)
    return F.pad(one_hot, (0, 0, 1, 0))[:, :-1]


class SequenceLearner(FewShotLearner):
    """A few-shot learner over labelled sequences (module docstring). No batch norm: a
    query's answer depends on the support set and itself alone (`per_query`)."""

    batchnorm_regimes: ClassVar[tuple[BatchNormRegime, ...]] = ("per_query",)

    def __init__(self) -> None:
        super().__init__()
        self.order: torch.Generator | None = None  # the training sequences' orders

    @abstractmethod
    def sequence_logits(self, sequences: Sequences) -> torch.Tensor:
        """(B, T, N) logits at every step; step t reads x_1..x_t and y_1..y_{t-1} only."""

    def sequence_trace(self, sequences: Sequences) -> dict[str, torch.Tensor] | None:
        """{name: (B, T, slots)} of what each step reads and writes in an external memory,
        for the figures; None (the default) for a learner without one."""
        return None

    def on_iteration(self, iteration: int, total: int) -> None:
        self.order = seeded_generator("sequence", iteration)

    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        support = shuffled_support(episodes, seeded_generator("query sequence"))
        batch, queries = episodes.query_y.shape
        steps = support.x.shape[1]
        # B·Q sequences: the support steps, then one query with a placeholder label (the
        # last step's label is never an input, so its value cannot matter).
        x = torch.cat(
            [
                support.x.unsqueeze(1).expand(-1, queries, *support.x.shape[1:]),
                episodes.query_x.unsqueeze(2),
            ],
            2,
        ).flatten(0, 1)
        y = torch.cat([support.y.unsqueeze(1).expand(-1, queries, steps),
                       support.y.new_zeros(batch, queries, 1)], 2).flatten(0, 1)  # fmt: skip
        logits = self.sequence_logits(Sequences(x, y, episodes.n_way))[:, -1]
        return logits.view(batch, queries, -1)

    def test_logits(self, episodes: Episodes) -> torch.Tensor:
        with torch.no_grad():
            return self.query_logits(episodes)

    def meta_step(self, episodes: Episodes, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One update on the episodes' support sets as shuffled sequences, cross-entropy at
        every step (the paper's loss; the episodes' queries are not used)."""
        sequences = shuffled_support(episodes, self.order or seeded_generator("sequence", 0))
        logits = self.sequence_logits(sequences)
        loss = F.cross_entropy(logits.flatten(0, 1), sequences.y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.before_update()
        optimizer.step()
        accuracy = (logits.argmax(-1) == sequences.y).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item()}
