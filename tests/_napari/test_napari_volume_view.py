"""3D views of fitted volumes: the finest pyramid level within a voxel budget, decoded in a worker,
shown in 3D and dropped in 2D (real viewers under Xvfb)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from miner_test_data import intensity_volume
from skimage.io import imsave
from skimage.transform import resize

from napari_miner import InvalidInputError, MinerConfig, fit
from napari_miner._napari.volume_view import (
    VOXEL_BUDGET,
    attach_volume_view,
    finest_level_within,
    is_volume_model,
    volume_view_of,
)

PLUGIN = "napari-miner"
LEVEL_1_ONLY = 40**3
"""A budget that admits level 1 (32³ voxels) of the 64³ test volume, not level 0."""

SHOTS = os.environ.get("NAPARI_MINER_SHOTS")
"""A folder to keep the 3D screenshot in (for a look at it), if set."""


@pytest.fixture(scope="module")
def volume_store(tmp_path_factory):
    """``(path, model)``: a 64³ intensity volume fitted with 3 levels (64³, 32³, 16³) and saved."""
    model = fit(
        intensity_volume((64, 64, 64)),
        MinerConfig(n_levels=3, block_size=8, max_steps=30, max_splits=0),
        device="cpu",
    )
    path = tmp_path_factory.mktemp("volume") / "vol.miner.zarr"
    model.save(path)
    return path, model


def _open(viewer, path):
    """The multiscale image layer of the store at ``path``, opened with the reader."""
    overlay, image = viewer.open(str(path), plugin=PLUGIN)
    assert image.multiscale and overlay.name.endswith("active blocks")
    return image


def _wait_level(qtbot, view, level: int) -> None:
    qtbot.waitUntil(lambda: view.shown_level == level, timeout=20_000)


# ----------------------------------------------------------------------------------- levels
def test_finest_level_within():
    shapes = [(64, 64, 64), (32, 32, 32), (16, 16, 16)]
    assert finest_level_within(shapes, 64**3) == 0
    assert finest_level_within(shapes, 64**3 - 1) == 1
    assert finest_level_within(shapes, LEVEL_1_ONLY) == 1
    assert finest_level_within(shapes, 16**3) == 2
    assert finest_level_within(shapes, 100) == 2  # none fits: the coarsest, as napari shows
    assert finest_level_within([(100, 10, 10), (50, 5, 5)], 10_000) == 0


def test_volume_models_only(volume_store, fitted_models):
    _, volume = volume_store
    assert is_volume_model(volume)
    assert not is_volume_model(fitted_models["gray"][1])
    assert not is_volume_model(fitted_models["rgb"][1])


# ------------------------------------------------------------------------------ the viewer
@pytest.mark.viewer
def test_3d_shows_the_finest_level_within_the_budget(make_napari_viewer, qtbot, volume_store):
    path, model = volume_store
    viewer = make_napari_viewer()
    image = _open(viewer, path)
    view = volume_view_of(image)  # attached by the reader
    assert view is not None and view.voxel_budget == VOXEL_BUDGET and view.level == 0
    view.voxel_budget = LEVEL_1_ONLY
    assert view.level == 1
    names = [layer.name for layer in viewer.layers]
    assert view.volume_layer is None and not view.decoding  # nothing is decoded in 2D

    viewer.dims.ndisplay = 3
    _wait_level(qtbot, view, 1)
    volume = view.volume_layer
    assert volume.name == "vol · MINER (3D, level 1)" and not volume.multiscale
    assert volume.data.shape == (32, 32, 32)
    np.testing.assert_allclose(volume.data, model.decode(level=1), atol=1e-6)
    assert tuple(volume.scale) == (2.0, 2.0, 2.0) and tuple(volume.translate) == (0.5, 0.5, 0.5)
    assert volume.visible and not image.visible
    assert viewer.layers.index(volume) == viewer.layers.index(image) + 1
    assert viewer.layers.selection.active is volume  # it replaces the selected image
    assert tuple(volume.contrast_limits) == tuple(image.contrast_limits)

    # back to 2D: the multiscale layer again, and only it
    viewer.dims.ndisplay = 2
    assert [layer.name for layer in viewer.layers] == names
    assert image.visible and view.volume_layer is None
    assert viewer.layers.selection.active is image

    # the decoded level is kept: 3D again shows it at once
    viewer.dims.ndisplay = 3
    assert view.shown_level == 1 and not view.decoding

    # another budget, another level
    view.voxel_budget = 64**3
    _wait_level(qtbot, view, 0)
    assert view.volume_layer.data.shape == (64, 64, 64)
    assert tuple(view.volume_layer.scale) == (1.0, 1.0, 1.0)
    assert [layer.name for layer in viewer.layers].count("vol · MINER (3D, level 0)") == 1
    assert "vol · MINER (3D, level 1)" not in viewer.layers
    # a budget below every level: napari's own 3D level (the coarsest) is the one to show
    view.voxel_budget = 100
    assert view.volume_layer is None and image.visible
    assert [layer.name for layer in viewer.layers] == names


@pytest.mark.viewer
def test_3d_screenshot_shows_the_finer_level(make_napari_viewer, qtbot, volume_store, tmp_path):
    path, model = volume_store
    viewer = make_napari_viewer(show=True)
    image = _open(viewer, path)
    view = volume_view_of(image)
    view.voxel_budget = 100  # napari's own 3D view: the coarsest level (16³)
    viewer.dims.ndisplay = 3
    coarse = viewer.screenshot(canvas_only=True, flash=False)
    view.voxel_budget = LEVEL_1_ONLY
    _wait_level(qtbot, view, 1)
    fine = viewer.screenshot(canvas_only=True, flash=False)
    folder = SHOTS or tmp_path
    imsave(os.path.join(folder, "volume_3d_level1.png"), fine, check_contrast=False)
    imsave(os.path.join(folder, "volume_3d_coarsest.png"), coarse, check_contrast=False)

    # napari looks down the first axis, rendering maximum intensity projections
    def projection(shot):
        gray = shot[..., :3].mean(axis=-1)
        rows, cols = np.nonzero(gray > 8)
        assert rows.size > 0.1 * gray.size, "blank canvas"
        return gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]

    def error(shot):
        a = resize(projection(shot) / 255, (32, 32), anti_aliasing=True)
        return float(np.abs(a - expected).mean())

    lo, hi = image.contrast_limits
    mip = (model.decode(level=1).max(axis=0) - lo) / (hi - lo)  # grey colormap, linear
    expected = resize(mip, (32, 32), anti_aliasing=True)
    assert error(fine) < 0.02, error(fine)
    assert error(fine) < 0.5 * error(coarse), (error(fine), error(coarse))


@pytest.mark.viewer
def test_settings_made_in_3d_carry_over_to_2d(make_napari_viewer, qtbot, volume_store):
    path, _ = volume_store
    viewer = make_napari_viewer()
    image = _open(viewer, path)
    overlay = viewer.layers["vol · MINER active blocks"]
    viewer.layers.selection.active = overlay  # the user works on another layer
    view = volume_view_of(image)
    view.voxel_budget = LEVEL_1_ONLY
    viewer.dims.ndisplay = 3
    _wait_level(qtbot, view, 1)
    assert viewer.layers.selection.active is overlay  # the 3D layer does not take the selection
    volume = view.volume_layer
    volume.contrast_limits = (0.2, 0.8)
    volume.colormap = "magma"
    volume.visible = False
    viewer.dims.ndisplay = 2
    assert tuple(image.contrast_limits) == pytest.approx((0.2, 0.8))
    assert image.colormap.name == "magma" and not image.visible
    # a hidden image is not decoded in 3D, until it is shown
    view.voxel_budget = 64**3
    viewer.dims.ndisplay = 3
    assert view.volume_layer is None and not view.decoding
    image.visible = True
    _wait_level(qtbot, view, 0)
    assert view.volume_layer.colormap.name == "magma"


@pytest.mark.viewer
def test_removing_the_layers(make_napari_viewer, qtbot, volume_store):
    path, _ = volume_store
    viewer = make_napari_viewer()
    image = _open(viewer, path)
    view = volume_view_of(image)
    view.voxel_budget = LEVEL_1_ONLY
    viewer.dims.ndisplay = 3
    _wait_level(qtbot, view, 1)
    # the user deletes the 3D layer: the multiscale layer shows again
    viewer.layers.remove(view.volume_layer)
    assert image.visible and view.volume_layer is None and view.attached
    # back and forth: the 3D layer is back
    viewer.dims.ndisplay = 2
    viewer.dims.ndisplay = 3
    volume = view.volume_layer
    assert view.shown_level == 1
    # deleting the multiscale layer ends the view and takes its 3D layer along
    viewer.layers.remove(image)
    assert not view.attached and volume not in viewer.layers
    assert volume_view_of(image) is None
    viewer.dims.ndisplay = 2
    viewer.dims.ndisplay = 3
    assert [layer.name for layer in viewer.layers] == ["vol · MINER active blocks"]


@pytest.mark.viewer
def test_opening_in_3d_and_decoding_errors(make_napari_viewer, qtbot, volume_store, monkeypatch):
    from napari.utils.notifications import notification_manager

    path, _ = volume_store
    viewer = make_napari_viewer()
    viewer.dims.ndisplay = 3
    image = _open(viewer, path)  # already in 3D: decoding starts at once
    view = volume_view_of(image)
    _wait_level(qtbot, view, 0)  # the default budget admits 64³

    def broken(model, level=0, region=None, device="cpu"):
        raise InvalidInputError("no such level")

    monkeypatch.setattr(type(view.model), "decode", broken)
    records = len(notification_manager.records)
    view.voxel_budget = LEVEL_1_ONLY
    qtbot.waitUntil(lambda: not view.decoding, timeout=20_000)
    assert view.shown_level == 0  # what was shown stays
    messages = [str(n.message) for n in notification_manager.records[records:]]
    assert any("could not decode level 1" in m and "no such level" in m for m in messages)


@pytest.mark.viewer
def test_attach_volume_view_checks_its_input(make_napari_viewer, volume_store, fitted_models):
    path, model = volume_store
    viewer = make_napari_viewer()
    image = _open(viewer, path)
    first = volume_view_of(image)
    with pytest.raises(InvalidInputError, match="voxel_budget"):
        attach_volume_view(viewer, image, model, voxel_budget=0)
    with pytest.raises(InvalidInputError, match="single-channel volume"):
        attach_volume_view(viewer, image, fitted_models["gray"][1])
    plain = viewer.add_image(np.zeros((64, 64, 64), np.float32))
    with pytest.raises(InvalidInputError, match="multiscale"):
        attach_volume_view(viewer, plain, model)
    small = viewer.add_image([np.zeros((32,) * 3), np.zeros((16,) * 3)], multiscale=True)
    with pytest.raises(InvalidInputError, match="shape"):
        attach_volume_view(viewer, small, model)
    assert first.attached and volume_view_of(image) is first  # failed calls change nothing
    second = attach_volume_view(viewer, image, model, voxel_budget=LEVEL_1_ONLY)
    assert volume_view_of(image) is second and not first.attached


@pytest.mark.viewer
def test_images_get_no_volume_view(make_napari_viewer, fitted_models, tmp_path):
    _, model = fitted_models["gray"]
    path = tmp_path / "gray.miner.zarr"
    model.save(path)
    viewer = make_napari_viewer()
    image = _open(viewer, path)
    assert volume_view_of(image) is None


@pytest.mark.viewer
def test_a_closed_viewer_lets_its_views_go(make_napari_viewer, qtbot, volume_store):
    import gc
    import weakref

    path, _ = volume_store
    viewer = make_napari_viewer()
    image = _open(viewer, path)
    view = volume_view_of(image)
    view.voxel_budget = LEVEL_1_ONLY
    viewer.dims.ndisplay = 3
    _wait_level(qtbot, view, 1)
    view_ref, image_ref = weakref.ref(view), weakref.ref(image)
    del view, image
    viewer.close()
    gc.collect()
    assert image_ref() is None and view_ref() is None
