import torch

from hypermeta.plots.regression import off_axis_note
from hypermeta.viz import distinct_colours, kernel_grid


def test_kernel_grid_places_each_filter_at_its_output_row_and_input_column():
    kernel = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).reshape(2, 3, 2, 2)
    grid = kernel_grid(kernel)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1)  # 2×2 tiles with 1-pixel gaps
    scale = kernel.abs().max()
    for out_channel in range(2):
        for in_channel in range(3):
            top, left = 1 + 3 * out_channel, 1 + 3 * in_channel
            tile = grid[top : top + 2, left : left + 2]
            torch.testing.assert_close(tile, kernel[out_channel, in_channel] / scale)
    assert grid[0].abs().sum() == 0 and grid[:, 0].abs().sum() == 0  # gaps stay empty


def test_a_prediction_off_the_clipped_axis_is_named_in_the_legend():
    inside = torch.tensor([-4.0, 0.0, 4.0])
    assert off_axis_note(inside, -5.0, 5.0) == ("", False)
    assert off_axis_note(torch.tensor([0.0, 6.0]), -5.0, 5.0) == (" (partly off the axis)", False)
    assert off_axis_note(torch.tensor([0.0, -3e11]), -5.0, 5.0) == (
        " — diverged (reaches -3e+11, off the axis)",
        True,
    )
    note, diverged = off_axis_note(torch.tensor([0.0, float("nan")]), -5.0, 5.0)
    assert diverged and "not finite" in note


def test_curves_of_many_models_get_distinct_colours():
    for count in (3, 12, 25):
        assert len(set(distinct_colours(count))) == count
