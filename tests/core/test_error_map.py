"""Error maps on a fixed scale: per pixel against a level's target, per block from training."""

import numpy as np
import pytest
import torch

from napari_miner.core.error_map import ERROR_RANGE_PERCENT, LevelTargets, error_percent
from napari_miner.core.layout import inspect_input
from napari_miner.core.pyramid import gaussian_targets


def test_error_percent_is_the_rmse_in_percent_of_the_value_range():
    np.testing.assert_allclose(error_percent(np.array([0.0, 1e-4, 0.01])), [0.0, 1.0, 10.0])
    assert error_percent(np.array([1e-4])).dtype == np.float32
    assert ERROR_RANGE_PERCENT > 0


def test_pixel_errors_are_against_the_fits_own_targets(rng):
    image = rng.integers(0, 256, size=(30, 20, 3), dtype=np.uint8)  # RGB, odd level shapes
    layout = inspect_input(image)
    targets = LevelTargets.of(image, layout)
    signal = layout.normalize(image)
    expected = gaussian_targets(signal, 3)
    for level in (2, 1, 0):  # coarse to fine, as a fit goes
        np.testing.assert_array_equal(targets.target(level).numpy(), expected[level].numpy())
        targets.release(level)
    # level 0 decoded exactly: no error; one channel off by 10 values: RMS over the 3 channels
    assert targets.error(0, image).max() == 0.0
    decoded = image.copy()
    decoded[4, 5, 1] += 10
    error = targets.error(0, decoded)
    assert error.shape == (30, 20) and error.dtype == np.float32
    span = float(image.max()) - float(image.min())
    assert error[4, 5] == pytest.approx(100 * np.sqrt((10 / span) ** 2 / 3), rel=1e-5)
    assert np.count_nonzero(error) == 1


def test_coarser_targets_are_released_and_only_arrays_get_pixel_maps(rng):
    image = rng.random((32, 32), dtype=np.float32)
    layout = inspect_input(image)
    targets = LevelTargets.of(image, layout)
    targets.target(2)
    targets.release(1)
    assert sorted(targets._targets) == [0, 1]
    torch.testing.assert_close(targets.target(2), gaussian_targets(layout.normalize(image), 3)[2])
    assert LevelTargets.of([[1.0, 2.0]], layout) is None  # not a NumPy array
    assert LevelTargets.of(np.zeros((1 << 14, 1 << 14), np.uint8), layout) is None  # too big
