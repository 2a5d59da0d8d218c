import math

import pytest
import torch

from hypermeta.stats import mean_interval


def test_mean_interval_over_few_samples_uses_student_t():
    mean, half = mean_interval(torch.tensor([1.0, 2.0, 3.0]))
    # t_{0.975} with 2 degrees of freedom is 4.303; the sample std of 1, 2, 3 is 1.
    assert mean == 2.0
    assert half == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)


def test_mean_interval_over_many_samples_is_close_to_normal():
    values = torch.randn(600, generator=torch.Generator().manual_seed(0))
    _, half = mean_interval(values)
    normal_half = 1.96 * values.double().std().item() / math.sqrt(600)
    assert half == pytest.approx(normal_half, rel=0.003)


def test_mean_interval_of_one_sample_has_no_width():
    assert mean_interval(torch.tensor([0.7])) == pytest.approx((0.7, 0.0))
