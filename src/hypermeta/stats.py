"""Confidence intervals for the numbers we report."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


def z_value(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (accuracy over n test examples)."""
    if n == 0:
        return (0.0, 1.0)
    z = z_value(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # p is inside the interval in exact arithmetic; keep it so after rounding too
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def mean_interval(values: torch.Tensor, confidence: float = 0.95) -> tuple[float, float]:
    """Mean ± Student-t half width over independent samples (seeds, episodes, blocks).

    t with n-1 degrees of freedom, not the normal z: over 3 seeds z = 1.96 would claim
    less than half the true width (t = 4.30); over 600 episodes the two agree (1.964)."""
    values = values.double().flatten()
    mean = values.mean().item()
    n = values.numel()
    if n < 2:
        return (mean, 0.0)
    # Imported here: scipy.special costs ~0.2 s, and only stages that evaluate need it.
    from scipy.special import stdtrit

    t = float(stdtrit(n - 1, 0.5 + confidence / 2))
    return (mean, t * values.std().item() / math.sqrt(n))


def paired_difference_ci(
    treated: torch.Tensor, baseline: torch.Tensor, confidence: float = 0.95
) -> tuple[float, float]:
    """Mean of treated - baseline over the same units (test episodes) ± the paired
    Student-t half width: the spread of the per-unit differences, not of each arm, so
    what the two share (an episode's difficulty) cancels."""
    if treated.shape != baseline.shape:
        raise ValueError(
            f"paired values must match one to one: shapes {tuple(treated.shape)} and "
            f"{tuple(baseline.shape)}"
        )
    return mean_interval(treated.double() - baseline.double(), confidence)
