"""The "MINER fit" dock widget with 3D volumes (under Xvfb): volume defaults in the form,
occupancy detection, 3D display (iso-rendered levels, 3D overlay), IoU in the progress line and
"Add mesh"."""

from __future__ import annotations

import numpy as np
import pytest
from miner_test_data import intensity_volume, spheres
from widget_helpers import click as _click
from widget_helpers import make_widget, wait_idle

from napari_miner import MinerConfig
from napari_miner._napari._inputs import binary_range
from napari_miner._napari.widget import MinerWidget
from napari_miner.core.overlay import active_block_labels

pytestmark = pytest.mark.viewer


def _widget(viewer, *, steps=300, **kwargs):
    return make_widget(viewer, steps=steps, **kwargs)


def _wait_idle(qtbot, widget, timeout=30_000):
    wait_idle(qtbot, widget, timeout)


ANGLES = (20.0, -40.0, 110.0)
"""An oblique 3D view (napari's default looks straight down the first axis)."""


def _record_statuses(widget, monkeypatch) -> list[str]:
    """Every progress line the widget shows."""
    texts: list[str] = []
    show = widget._show_status

    def record(status):
        show(status)
        texts.append(widget.status_label.text())

    monkeypatch.setattr(widget, "_show_status", record)
    return texts


def _add_mesh(qtbot, widget, name):
    results = widget.results
    assert results.mesh_button.isEnabled()
    assert results.add_mesh()  # what the button does; no events handled before the checks below
    assert results.mesh_busy and not results.mesh_button.isEnabled()
    assert "extracting the mesh" in widget.status_label.text()
    assert not widget.fit_button.isEnabled()
    qtbot.waitUntil(lambda: not results.mesh_busy, timeout=20_000)
    assert results.mesh_button.isEnabled() and widget.fit_button.isEnabled()
    return widget.viewer.layers[name]


def _only(viewer, *names) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name in names


def _shot(viewer) -> np.ndarray:
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(float)


# ------------------------------------------------------------------------------ form
def test_binary_range():
    from dask import array as da
    from napari.layers import Image

    def layer(data, **kwargs):
        return Image(data, **kwargs)

    occupied = spheres(16)
    assert binary_range(layer(occupied)) == (0.0, 1.0)
    assert binary_range(layer(occupied.astype(np.uint8) * 255)) == (0.0, 255.0)
    assert binary_range(layer(np.where(occupied, 5.0, -2.0))) == (-2.0, 5.0)
    assert binary_range(layer(np.zeros((8, 8, 8), np.uint16))) == (0.0, 1.0)
    assert binary_range(layer(np.full((8, 8, 8), 7.0))) is None
    assert binary_range(layer(intensity_volume((16, 16, 16)))) is None
    three = occupied.astype(np.int32)
    three[0, 0, 0] = 2
    assert binary_range(layer(three)) is None
    assert binary_range(layer(np.full((8, 8, 8), np.nan))) is None
    # lazy data: only a central box is read
    lazy = da.from_array(occupied.astype(np.uint8) * 3, chunks=8)
    assert binary_range(layer(lazy)) == (0.0, 3.0)
    pyramid = [occupied.astype(np.uint8), occupied[::2, ::2, ::2].astype(np.uint8)]
    assert binary_range(layer(pyramid, multiscale=True)) == (0.0, 1.0)


def test_volume_input_switches_the_form_defaults(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 16), np.float32), name="img")
    viewer.add_image(spheres(16), name="occ")
    viewer.add_image(intensity_volume((16, 16, 16)), name="intensity")
    viewer.add_image(np.zeros((16, 16, 3), np.uint8), name="rgb", rgb=True)
    widget = MinerWidget(viewer)
    fields = widget.settings.fields
    form = lambda: tuple(fields[n].value for n in ("block_size", "hidden_width", "max_steps"))  # noqa: E731
    assert widget.inputs.selected_layer().name == "img"
    assert widget.config() == MinerConfig()
    widget.inputs.input_combo.setCurrentText("occ")
    assert form() == (16, 20, 2000)
    config = widget.config()
    assert config == MinerConfig.for_volume(occupancy=True)
    assert config.iou_threshold == 0.5 and config.target_iou == 0.99
    widget.inputs.input_combo.setCurrentText("intensity")
    assert widget.config() == MinerConfig.for_volume(occupancy=False)
    widget.inputs.input_combo.setCurrentText("rgb")  # an RGB image is 2D
    assert form() == (32, 18, 500) and widget.config() == MinerConfig()
    widget.inputs.input_combo.setCurrentText("img")
    assert widget.config() == MinerConfig()

    # values edited by hand survive switching
    fields["hidden_width"].value = 33
    widget.inputs.input_combo.setCurrentText("occ")
    assert form() == (16, 33, 2000)
    fields["max_steps"].value = 123
    widget.inputs.input_combo.setCurrentText("img")
    assert form() == (32, 33, 123)
    assert widget.config() == MinerConfig(hidden_width=33, max_steps=123)

    # the selected volume removed: the next input (2D) brings the 2D defaults back
    fields["hidden_width"].value = 18
    fields["max_steps"].value = 500
    widget.inputs.input_combo.setCurrentText("occ")
    viewer.layers.remove("img")
    viewer.layers.remove("occ")
    assert widget.inputs.selected_layer().name == "intensity" and form() == (16, 20, 2000)
    viewer.layers.remove("intensity")
    assert widget.inputs.selected_layer().name == "rgb" and form() == (32, 18, 500)

    # a widget opened on a volume starts with the volume defaults
    viewer.add_image(spheres(16), name="vol")
    viewer.layers.remove("rgb")
    fresh = MinerWidget(viewer)
    assert fresh.config() == MinerConfig.for_volume()
    assert not fresh.results.mesh_button.isEnabled()
    fresh.deleteLater()


def test_a_volume_path_switches_the_form_defaults(make_napari_viewer, tmp_path):
    import zarr

    zarr.create_array(str(tmp_path / "occ.zarr"), data=spheres(16), chunks=(8, 8, 8))
    viewer = make_napari_viewer()
    widget = MinerWidget(viewer)
    assert widget.config() == MinerConfig()
    widget.inputs.path_edit.setText(str(tmp_path / "occ"))  # typing: nothing opened yet
    assert widget.config() == MinerConfig()
    widget.inputs.path_edit.setText(str(tmp_path / "occ.zarr"))
    widget.inputs.path_edit.editingFinished.emit()  # entered
    assert widget.config() == MinerConfig.for_volume(occupancy=True)
    widget.inputs.path_edit.setText("")  # no input at all: the form stays as it is
    widget.inputs.path_edit.editingFinished.emit()
    assert widget.config() == MinerConfig.for_volume(occupancy=True)
    widget.deleteLater()


# --------------------------------------------------------------------------- fitting
def test_fit_occupancy_volume_in_3d_and_add_mesh(make_napari_viewer, qtbot, monkeypatch):
    volume = spheres(32)
    scale, translate = np.array([2.0, 1.0, 0.5]), np.array([5.0, -3.0, 10.0])
    viewer = make_napari_viewer(show=True)
    viewer.add_image(volume, name="occ", scale=scale, translate=translate)
    widget = _widget(viewer)
    texts = _record_statuses(widget, monkeypatch)
    assert widget.config().iou_threshold == 0.5
    assert not widget.results.mesh_button.isEnabled()
    assert viewer.dims.ndisplay == 2
    _click(qtbot, widget.fit_button)
    assert viewer.dims.ndisplay == 3  # switched when the fit starts
    assert not widget.results.mesh_button.isEnabled()
    _wait_idle(qtbot, widget)

    model = widget.model
    status = widget.status_label.text()
    assert status.startswith("done (") and "IoU" in status, status
    assert any(" · IoU 0." in t or " · IoU 1.000" in t for t in texts), texts
    assert viewer.dims.ndisplay == 3
    # level layers: 3D volumes, iso surfaces at the middle of the value range, in place
    names = [f"occ · MINER level {j}" for j in range(3)]
    for j, name in enumerate(names):
        layer = viewer.layers[name]
        assert layer.ndim == 3 and layer.data.shape == model.level_shape(j)
        assert layer.rendering == "iso" and layer.iso_threshold == pytest.approx(0.5)
        assert layer.data.dtype == np.float32  # not rounded to bool: a smooth iso surface
        np.testing.assert_allclose(layer.scale, 2**j * scale)
        np.testing.assert_allclose(layer.translate, translate + (2**j - 1) / 2 * scale)
        assert not layer.visible  # the result layer replaces them
    level0 = viewer.layers[names[0]].data
    assert np.mean((level0 >= 0.5) == model.decode(0)) > 0.999
    final = viewer.layers["occ · MINER"]
    assert not final.multiscale and final.visible  # 3D shows the full resolution
    assert final.rendering == "iso" and final.data.shape == volume.shape
    np.testing.assert_allclose(final.scale, scale)
    np.testing.assert_allclose(final.translate, translate)
    # the 3D overlay: translucent, labelled as the model's active blocks
    overlay = viewer.layers["occ · MINER active blocks"]
    assert overlay.ndim == 3 and overlay.rendering == "translucent" and overlay.opacity < 0.4
    np.testing.assert_array_equal(overlay.data, active_block_labels(model)[0])
    np.testing.assert_allclose(overlay.scale, 8 * scale)

    # Add mesh: a Surface layer in the input's world coordinates
    assert widget.results.mesh_button.isEnabled()
    surface = _add_mesh(qtbot, widget, "occ · MINER mesh")
    vertices, faces = surface.data[0], surface.data[1]
    assert len(faces) > 0 and surface.ndim == 3
    assert surface.shading == "smooth"
    np.testing.assert_allclose(surface.scale, scale)
    np.testing.assert_allclose(surface.translate, translate)
    occupied = np.argwhere(volume)
    lo = translate + scale * (occupied.min(axis=0) - 0.5)  # outer faces of the occupied voxels
    hi = translate + scale * (occupied.max(axis=0) + 0.5)
    world = translate + scale * vertices
    np.testing.assert_allclose(world.min(axis=0), lo, atol=0.5 * scale.max())
    np.testing.assert_allclose(world.max(axis=0), hi, atol=0.5 * scale.max())
    extent = np.asarray(surface.extent.world)  # napari agrees on where the surface is
    np.testing.assert_allclose(extent[0], world.min(axis=0), atol=1e-4)
    np.testing.assert_allclose(extent[1], world.max(axis=0), atol=1e-4)
    assert "faces" in widget.status_label.text()

    # what the 3D canvas shows: the mesh, the iso surface and the overlay, each not blank
    viewer.reset_view()  # (resets the camera angles too)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.angles = ANGLES
    _only(viewer)
    empty = _shot(viewer)
    assert empty.std() < 1.0
    shots = {}
    for name in ("occ · MINER mesh", "occ · MINER", "occ · MINER active blocks"):
        _only(viewer, name)
        shots[name] = _shot(viewer)
        assert shots[name].std() > 5.0, name
        assert np.abs(shots[name] - empty).mean() > 2.0, name
    # the iso surface and the mesh are the same shape: their silhouettes overlap
    mesh_mask = np.abs(shots["occ · MINER mesh"] - empty).sum(-1) > 30
    iso_mask = np.abs(shots["occ · MINER"] - empty).sum(-1) > 30
    overlap = (mesh_mask & iso_mask).sum() / max(1, (mesh_mask | iso_mask).sum())
    assert overlap > 0.8, overlap

    # a second mesh replaces the first
    _only(viewer, "occ · MINER mesh")
    again = _add_mesh(qtbot, widget, "occ · MINER mesh")
    assert again is not surface and surface not in viewer.layers
    assert [layer.name for layer in viewer.layers].count("occ · MINER mesh") == 1


def test_stopped_intensity_volume(make_napari_viewer, qtbot, monkeypatch):
    import napari.utils.notifications as notifications

    import napari_miner.io.mesh as mesh_module
    from napari_miner.core.errors import InvalidInputError

    volume = intensity_volume((32, 32, 32))
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="vol")
    long = dict(plateau_rel_tol=0.0, final_plateau_rel_tol=0.0, target_psnr=100.0, weight_bits=None)
    widget = _widget(viewer, steps=100_000, **long)
    texts = _record_statuses(widget, monkeypatch)
    assert widget.config().iou_threshold is None  # not binary: no occupancy tracking
    _click(qtbot, widget.fit_button)
    assert viewer.dims.ndisplay == 3
    qtbot.waitUntil(lambda: len(texts) > 0, timeout=20_000)
    viewer.dims.ndisplay = 2  # the user goes back to 2D: the widget leaves it so
    qtbot.waitUntil(
        lambda: widget.progress is not None and widget.progress.level == 1, timeout=20_000
    )
    assert widget.progress.iou is None
    _click(qtbot, widget.fit_button)  # Stop
    _wait_idle(qtbot, widget)
    assert viewer.dims.ndisplay == 2
    assert "stopped" in widget.status_label.text()
    assert not any("IoU" in t for t in texts)
    level1 = viewer.layers["vol · MINER level 1"]
    assert level1.rendering == "mip" and level1.data.dtype == volume.dtype
    assert not viewer.layers["vol · MINER level 2"].visible  # finer level shown, coarser hidden
    final = viewer.layers["vol · MINER"]
    assert not final.multiscale and final.data.shape == volume.shape
    np.testing.assert_array_equal(final.data, widget.model.decode(0))

    # a stopped model can be meshed too
    surface = _add_mesh(qtbot, widget, "vol · MINER mesh")
    assert len(surface.data[1]) > 0

    # no surface at the threshold: a notification, the widget stays usable
    messages: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda m, *a, **k: messages.append(str(m)))

    def no_surface(model, level=0, threshold=0.5):
        raise InvalidInputError(f"no surface at threshold {threshold}")

    monkeypatch.setattr(mesh_module, "extract_mesh", no_surface)
    _click(qtbot, widget.results.mesh_button)
    qtbot.waitUntil(lambda: not widget.results.mesh_busy, timeout=20_000)
    assert any("no surface at threshold 0.5" in m for m in messages), messages
    assert "no mesh" in widget.status_label.text()
    assert widget.results.mesh_button.isEnabled() and widget.fit_button.isEnabled()
    assert surface in viewer.layers  # the earlier mesh stays

    # closing the viewer during an extraction waits for it and drops its result
    import threading

    from qtpy.QtWidgets import QApplication

    release = threading.Event()

    def slow(model, level=0, threshold=0.5):
        release.wait(5.0)
        raise InvalidInputError("too late")

    monkeypatch.setattr(mesh_module, "extract_mesh", slow)
    messages.clear()
    assert widget.results.add_mesh() and widget.results.mesh_busy
    assert QApplication.overrideCursor() is not None  # busy cursor while extracting
    threading.Timer(0.3, release.set).start()
    viewer.close()
    assert not widget.results.mesh_busy and QApplication.overrideCursor() is None
    qtbot.wait(100)
    assert not messages
