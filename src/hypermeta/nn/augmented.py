"""Layer-augmented networks (Munkhdalai & Yu 2017, "Meta Networks", §3.3): every layer has
a slow and a fast branch over the same input, each through its own ReLU, the two
activations summed. The slow weights are learned; the fast ones (`fast_names`) are for a
generator to supply (hyper/generated.py). With zero fast weights a fast branch adds
relu(0) = 0 (no biases), so the network is exactly its slow one."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class AugmentedConv(nn.Module):
    """relu(conv₃ₓ₃(x, slow)) + relu(conv₃ₓ₃(x, fast)), then a 2×2 max-pool that keeps an odd
    edge (the authors' Chainer pooling: 28 → 14 → 7 → 4 → 2 → 1)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.slow = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.fast = nn.Parameter(torch.zeros(out_channels, in_channels, 3, 3))
        nn.init.kaiming_normal_(self.slow, nonlinearity="relu")  # no batch norm: keep the scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slow = F.relu(F.conv2d(x, self.slow, padding=1))
        fast = F.relu(F.conv2d(x, self.fast, padding=1))
        return F.max_pool2d(slow + fast, 2, ceil_mode=True)


class AugmentedLinear(nn.Module):
    """relu(x slowᵀ) + relu(x fastᵀ), or, for an output layer (`activate=False`), the two
    branches' sum without ReLU (as the authors' softmax layer)."""

    def __init__(self, in_features: int, out_features: int, activate: bool) -> None:
        super().__init__()
        self.activate = activate
        self.slow = nn.Parameter(torch.empty(out_features, in_features))
        self.fast = nn.Parameter(torch.zeros(out_features, in_features))
        nn.init.kaiming_normal_(self.slow, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slow, fast = F.linear(x, self.slow), F.linear(x, self.fast)
        return F.relu(slow) + F.relu(fast) if self.activate else slow + fast


class AugmentedNet(nn.Module):
    """`depth` augmented 3×3 conv blocks of `width` filters, flattened, then augmented
    linear layers of the sizes in `linear` (ReLU on all but the last unless
    `activate_last`)."""

    def __init__(
        self,
        channels: int,
        width: int,
        depth: int,
        image_size: int,
        linear: Sequence[int],
        activate_last: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(AugmentedConv(channels if i == 0 else width, width) for i in range(depth))
        )
        side = image_size
        for _ in range(depth):
            side = math.ceil(side / 2)
        sizes = [width * side * side, *linear]
        self.linear = nn.Sequential(
            *(
                AugmentedLinear(a, b, activate=activate_last or i < len(linear) - 1)
                for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False))
            )
        )
        # The fast branches' weights, in definition order (named before a generator takes them).
        self.fast_names = [name for name, _ in self.named_parameters() if name.endswith(".fast")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.blocks(x).flatten(1))


def slow_name(fast: str) -> str:
    """The slow weight of the layer whose fast weight is `fast`."""
    return fast.removesuffix("fast") + "slow"
