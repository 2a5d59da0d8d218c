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


def test_paired_difference_is_the_t_interval_of_the_differences():
    from hypermeta.stats import paired_difference

    treated = torch.tensor([0.9, 0.8, 1.0, 0.7])
    baseline = torch.tensor([0.8, 0.8, 0.9, 0.5])
    # differences 0.1, 0, 0.1, 0.2: mean 0.1, sample std sqrt(0.02 / 3); t_{0.975, 3} = 3.1824
    mean, half = paired_difference(baseline, treated)
    assert mean == pytest.approx(0.1)
    assert half == pytest.approx(3.18245 * math.sqrt(0.02 / 3) / 2, rel=1e-4)
    # unpaired, each arm's spread would give a far wider interval
    assert half < mean_interval(treated)[1]
    with pytest.raises(ValueError, match="differ in shape"):
        paired_difference(torch.zeros(3), torch.zeros(4))
