"""Sample data functions return the documented images as napari LayerData tuples."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from napari_miner._napari import sample_data


@pytest.mark.parametrize(
    ("func", "shape", "name"),
    [
        (sample_data.astronaut, (512, 512, 3), "astronaut"),
        (sample_data.retina, (1280, 1280, 3), "retina"),
    ],
)
def test_sample_layer_data(func, shape, name):
    layers = func()
    assert len(layers) == 1
    data, kwargs, layer_type = layers[0]
    assert layer_type == "image"
    assert isinstance(data, np.ndarray)
    assert data.shape == shape
    assert data.dtype == np.uint8
    assert kwargs == {"name": name, "rgb": True}


def test_astronaut_is_skimage_astronaut(astronaut):
    np.testing.assert_array_equal(sample_data.astronaut()[0][0], astronaut)


def test_retina_is_top_left_crop():
    full = skdata.retina()
    crop = sample_data.retina()[0][0]
    np.testing.assert_array_equal(crop, full[:1280, :1280])
    assert crop.flags.c_contiguous
    # a crop, not a resize: the full image is larger
    assert full.shape[0] > 1280 and full.shape[1] > 1280
