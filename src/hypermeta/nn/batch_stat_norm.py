"""Batch normalisation that uses the statistics of the batch it is given.

Gradient-based meta-learners normalise each task's batch with its own statistics and
keep no running averages in the layer (MAML's protocol), which also keeps the layer a
pure function that `torch.func.vmap` can batch over tasks. A learner that does keep
running statistics (MAML++, per step) holds them itself: it collects batch statistics
with `recorded_statistics` and supplies its estimates back through `functional_call`
(as `running_mean`, `running_var`), like any other generated weight.

It is written with elementary tensor ops on purpose: in PyTorch 2.14 the second
derivative of the native `batch_norm` kernel under `vmap` is wrong (a 1e-3 error in
MAML's meta-gradient on a 3-task toy problem, exact without vmap), while these ops
differentiate exactly to any order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

Statistics = tuple[torch.Tensor, torch.Tensor]


class BatchStatNorm(nn.Module):
    """Normalise over every dimension but the channel one (dim 1), then scale and shift;
    parameters named like `nn.BatchNorm*d`'s (`weight`, `bias`)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        # Statistics to normalise with instead of the batch's: never stored here, only
        # swapped in for one call by `functional_call` (MAML++'s per-step estimates).
        self.running_mean: torch.Tensor | None = None
        self.running_var: torch.Tensor | None = None
        self.recorder: list[Statistics] | None = None  # set by `recorded_statistics`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.running_mean is None or self.running_var is None:
            dims = [d for d in range(x.dim()) if d != 1]
            var, mean = torch.var_mean(x, dims, correction=0)
            if self.recorder is not None:
                self.recorder.append((mean.detach(), var.detach()))
        else:
            mean, var = self.running_mean, self.running_var
        shape = [1, -1] + [1] * (x.dim() - 2)
        # Fold normalisation and affine into one per-channel scale and shift, so the
        # full-size tensor sees a single fused op (and its derivatives a few more).
        scale = torch.rsqrt(var + self.eps) * self.weight
        shift = self.bias - mean * scale
        return torch.addcmul(shift.view(shape), x, scale.view(shape))


@contextmanager
def recorded_statistics(module: nn.Module) -> Iterator[dict[str, list[Statistics]]]:
    """While inside, each `BatchStatNorm` of `module` that normalises with its batch's
    statistics appends them, (mean, var) detached, to its list in the yielded dict (keyed
    by layer name): the very numbers it used, not recomputed. Under vmap the caller must
    return what was recorded (values may not escape the transform)."""
    norms = {name: m for name, m in module.named_modules() if isinstance(m, BatchStatNorm)}
    recorded: dict[str, list[Statistics]] = {name: [] for name in norms}
    for name, norm in norms.items():
        norm.recorder = recorded[name]
    try:
        yield recorded
    finally:
        for norm in norms.values():
            norm.recorder = None


def stacked_statistics(recorded: dict[str, list[Statistics]]) -> dict[str, torch.Tensor]:
    """`recorded_statistics`' lists as `{layer}.running_mean` / `.running_var` → (calls, C):
    the names a `BatchStatNorm` takes supplied statistics under."""
    stacked = {}
    for layer, calls in recorded.items():
        means, variances = zip(*calls, strict=True)
        stacked[f"{layer}.running_mean"] = torch.stack(means)
        stacked[f"{layer}.running_var"] = torch.stack(variances)
    return stacked


def use_batch_statistics(module: nn.Module) -> nn.Module:
    """Replace every batch-norm layer of `module` (in place) by a `BatchStatNorm` with the
    same affine parameters; returns `module`."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            replacement = BatchStatNorm(child.num_features, child.eps)
            if child.affine:
                replacement.weight.data.copy_(child.weight.data)
                replacement.bias.data.copy_(child.bias.data)
            setattr(module, name, replacement)
        else:
            use_batch_statistics(child)
    return module
