"""How close two results of the same computation must be when its sums run in another
order: other thread counts, task chunks, vmap against a loop, another CPU's kernels.

Floating-point addition is not associative: reordering a sum of n terms moves it by up to
about n·eps·Σ|terms|. An element that is a near-cancelling sum of large terms keeps the
large terms' rounding, so a bound relative to each element alone is wrong for it (a
difference of 1e-6 on an element of 0.009 is 1e-4 relative, yet only a few ulps of the
tensor's larger entries). The bound here is therefore relative to the tensor's largest
magnitude, in units of its dtype's machine epsilon. Bit-for-bit checks (`torch.equal`)
stay only where the two computations run the same operations in the same order.
"""

from __future__ import annotations

import torch

# 2**10 ulps of the largest entry (1.2e-4 of it in float32, 2.3e-13 in float64): room for
# sums over a few hundred terms compounding through several layers and inner steps,
# while a real mistake (a dropped term, a wrong statistic) moves results by percents.
REORDERING_ULPS = 2**10


def assert_close_reordered(
    actual: torch.Tensor, expected: torch.Tensor, ulps: int = REORDERING_ULPS
) -> None:
    """`actual` equals `expected` up to the rounding of summing in another order."""
    eps = torch.finfo(expected.dtype).eps
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=ulps * eps, atol=ulps * eps * scale)
