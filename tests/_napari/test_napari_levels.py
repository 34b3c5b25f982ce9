"""add_level_layers puts every pyramid level where the full-resolution input is (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_miner._napari.levels import add_level_layers, level_layer_name, level_transform


def test_level_transform_centres():
    assert level_transform(0, 2) == ((1.0, 1.0), (0.0, 0.0))
    assert level_transform(1, 2) == ((2.0, 2.0), (0.5, 0.5))
    assert level_transform(3, 3) == ((8.0, 8.0, 8.0), (3.5, 3.5, 3.5))


@pytest.mark.parametrize("kind", ["gray", "rgb"])
def test_add_level_layers(fitted_models, kind):
    image, model = fitted_models[kind]
    viewer = ViewerModel()
    layers = add_level_layers(viewer, model, "img")
    n = model.n_levels
    assert n == 3

    assert [layer.name for layer in layers] == [f"img · MINER level {j}" for j in range(n)]
    assert level_layer_name("img", 2) == "img · MINER level 2"
    # coarse levels go in first, so the full-resolution reconstruction is on top
    assert [layer.name for layer in viewer.layers] == [layer.name for layer in layers[::-1]]
    assert layers[0].data.shape == image.shape
    lo, hi = model.value_range
    for j, layer in enumerate(layers):
        np.testing.assert_array_equal(layer.data, model.decode(level=j))
        assert layer.data.dtype == image.dtype
        assert layer.data.shape[:2] == model.level_shape(j)
        assert layer.data.shape[:2] == tuple(-(-s // 2**j) for s in image.shape[:2])
        assert layer.rgb == (kind == "rgb")
        np.testing.assert_allclose(layer.scale, [2**j, 2**j])
        np.testing.assert_allclose(layer.translate, [(2**j - 1) / 2] * 2)
        np.testing.assert_allclose(layer.contrast_limits, [lo, hi])


def test_level_pixels_centred_on_full_resolution_blocks(fitted_models):
    _, model = fitted_models["gray"]
    layers = add_level_layers(ViewerModel(), model, "img")
    for j, layer in enumerate(layers):
        f = 2**j
        # level pixel (i, k) summarises full-res pixels [i*f, (i+1)*f) x [k*f, (k+1)*f)
        for i, k in [(0, 0), (1, 2), (3, 1)]:
            world = layer.data_to_world((i, k))
            np.testing.assert_allclose(world, [i * f + (f - 1) / 2, k * f + (f - 1) / 2])
    # every level's pixel corners start where the input's do and cover the whole input
    shape0 = np.array(layers[0].data.shape[:2])
    top_left0 = layers[0].data_to_world((-0.5, -0.5))
    bottom_right0 = layers[0].data_to_world(tuple(shape0 - 0.5))
    for layer in layers[1:]:
        shape = np.array(layer.data.shape[:2])
        np.testing.assert_allclose(layer.data_to_world((-0.5, -0.5)), top_left0)
        assert np.all(np.asarray(layer.data_to_world(tuple(shape - 0.5))) >= bottom_right0)


def test_constant_image_gets_non_empty_contrast_limits(fitted_models):
    image, model = fitted_models["flat"]
    layers = add_level_layers(ViewerModel(), model, "flat")
    np.testing.assert_array_equal(layers[0].data, image)
    lo, hi = layers[0].contrast_limits
    assert lo == 7 and hi > lo
