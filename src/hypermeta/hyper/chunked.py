"""Chunked task-conditioned hypernetwork (von Oswald et al. 2020, §2.2 and Fig. 1b).

All weights of a target network are flattened and cut into chunks of `chunk_size`.
One small MLP maps [task embedding e_t, chunk embedding c_k] to chunk k, so the same
hypernetwork weights are reused for every chunk and the trainable parameter count can
be far below the target's (the compression ratio the paper reports). It is a
`WeightGenerator` whose condition is the task id: the task embeddings are its own
parameters, and `GeneratedModel(target, hnet)(x, condition=task)` runs the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from hypermeta.hyper.generated import WeightGenerator
from hypermeta.nn.mainnet import Activation, mlp


class ChunkedHypernet(WeightGenerator):
    """h(e_t; Θ): task embedding → every weight of the target, one chunk at a time."""

    def __init__(
        self,
        target_shapes: dict[str, torch.Size],
        num_tasks: int,
        task_dim: int = 96,
        chunk_dim: int = 96,
        chunk_size: int = 4000,
        hidden: Sequence[int] = (100, 100),
        activation: Activation = "relu",
    ) -> None:
        super().__init__(target_shapes)
        self.num_weights = sum(math.prod(shape) for shape in self.target_shapes.values())
        self.num_chunks = math.ceil(self.num_weights / chunk_size)
        self.task_embeddings = nn.Parameter(torch.randn(num_tasks, task_dim))
        self.chunk_embeddings = nn.Parameter(torch.randn(self.num_chunks, chunk_dim))
        self.body = mlp(task_dim + chunk_dim, hidden, chunk_size, activation)
        self._scale_output_to_he_init()

    @torch.no_grad()
    def _scale_output_to_he_init(self) -> None:
        """Start the generated weights at the spread He initialisation would give the
        target (count-weighted RMS of sqrt(2 / fan_in) over its weight matrices), so the
        generated network trains from a sensible point instead of saturating."""
        matrices = [s for s in self.target_shapes.values() if len(s) >= 2]
        weighted = sum(math.prod(s) * 2 / math.prod(s[1:]) for s in matrices)
        wanted = math.sqrt(weighted / sum(math.prod(s) for s in matrices))
        last = self.body[-1]
        nn.init.zeros_(last.bias)
        produced = self.flat_weights(self.task_embeddings).std().item()
        last.weight.mul_(wanted / produced)

    def flat_weights(
        self, embeddings: torch.Tensor, params: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(k, task_dim) task embeddings → (k, num_weights) flattened target weights.

        `params` replaces some of the hypernetwork's own (chunk embeddings, body
        weights) by name, e.g. Θ + ΔΘ for the regulariser's look-ahead."""
        params = params or {}
        chunks = params.get("chunk_embeddings", self.chunk_embeddings)
        body = {n.removeprefix("body."): p for n, p in params.items() if n.startswith("body.")}
        k = embeddings.shape[0]
        inputs = torch.cat(
            [
                embeddings[:, None, :].expand(k, self.num_chunks, -1),
                chunks[None].expand(k, -1, -1),
            ],
            dim=-1,
        )
        return functional_call(self.body, body, (inputs,)).reshape(k, -1)[:, : self.num_weights]

    def forward(self, task: int) -> dict[str, torch.Tensor]:
        """Task id → {target parameter name: generated tensor}, from the task's embedding."""
        flat = self.flat_weights(self.task_embeddings[task][None])[0]
        weights, offset = {}, 0
        for name, shape in self.target_shapes.items():
            size = math.prod(shape)
            weights[name] = flat[offset : offset + size].view(shape)
            offset += size
        return weights
