"""Real napari viewers (under Xvfb): the level layers actually show the image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.io import imsave
from skimage.transform import resize

from napari_miner._napari.levels import add_level_layers

pytestmark = pytest.mark.viewer

GRID = (32, 32)


def _as_gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    return image[..., :3].mean(axis=-1) if image.ndim == 3 else image


def _camera(viewer):
    # napari >= 0.9 moved the camera to viewer.scene.camera
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def _world_box_on_canvas(viewer, shot: np.ndarray, shape) -> np.ndarray:
    """Crop the screenshot to the canvas pixels showing world box [-0.5, shape - 0.5]."""
    canvas = np.array(shot.shape[:2], dtype=float)
    camera = _camera(viewer)
    center = np.asarray(camera.center, dtype=float)[-2:]
    zoom = camera.zoom
    lo = np.round((np.array([-0.5, -0.5]) - center) * zoom + canvas / 2).astype(int)
    hi = np.round((np.asarray(shape) - 0.5 - center) * zoom + canvas / 2).astype(int)
    assert np.all(lo >= 0) and np.all(hi <= canvas), "image not fully on the canvas"
    return shot[lo[0] : hi[0], lo[1] : hi[1]]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = resize(_as_gray(a), GRID, anti_aliasing=True).ravel()
    b = resize(_as_gray(b), GRID, anti_aliasing=True).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_level_layers_render_the_image(make_napari_viewer, fitted_camera, tmp_path):
    image, model = fitted_camera
    viewer = make_napari_viewer(show=True)
    layers = add_level_layers(viewer, model, "camera")
    viewer.reset_view()
    assert len(layers) == model.n_levels >= 2

    for j, shown in enumerate(layers):
        for layer in layers:
            layer.visible = layer is shown
        shot = viewer.screenshot(canvas_only=True, flash=False)
        imsave(tmp_path / f"level{j}.png", shot, check_contrast=False)
        assert shot.ndim == 3 and shot.shape[-1] == 4
        crop = _world_box_on_canvas(viewer, shot, image.shape[:2])
        # each level is drawn over the whole input's extent and shows that level's decoding
        decoded = model.decode(level=j)
        corr = _correlation(crop, decoded)
        upside_down = _correlation(crop, decoded[::-1])
        assert corr > 0.95, f"level {j}: correlation {corr:.3f} (see {tmp_path})"
        assert corr > upside_down + 0.3, f"level {j}: {corr:.3f} vs flipped {upside_down:.3f}"
        if j == 0:  # and the full-resolution reconstruction looks like the input
            assert _correlation(crop, image) > 0.9


def test_empty_canvas_does_not_look_like_the_image(make_napari_viewer, fitted_camera):
    """Control for the check above: a hidden layer leaves nothing that correlates."""
    image, model = fitted_camera
    viewer = make_napari_viewer(show=True)
    layers = add_level_layers(viewer, model, "camera")
    viewer.reset_view()
    for layer in layers:
        layer.visible = False
    shot = viewer.screenshot(canvas_only=True, flash=False)
    crop = _as_gray(_world_box_on_canvas(viewer, shot, image.shape[:2]))
    assert crop.std() < 1.0  # a flat background


def test_open_sample_through_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-miner", "astronaut")
    assert [layer.name for layer in viewer.layers] == ["astronaut"]
    layer = viewer.layers["astronaut"]
    assert layer.rgb
    assert layer.data.shape == (512, 512, 3)
