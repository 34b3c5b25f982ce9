"""The "MINER fit" dock widget in a real viewer (under Xvfb): fitting, live layers, stop, pause,
errors, closing, transforms and what the canvas shows."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from qtpy.QtCore import QThreadPool
from skimage import data as skdata
from skimage.transform import resize
from widget_helpers import click as _click
from widget_helpers import make_widget, wait_idle

from napari_miner import MinerConfig, load
from napari_miner._napari.progressive_layer import REFRESHER_KEY
from napari_miner._napari.widget import PBAR_STEPS, MinerWidget

pytestmark = pytest.mark.viewer


def _widget(viewer, *, steps=30, **kwargs):
    return make_widget(viewer, steps=steps, **kwargs)


def _wait_idle(qtbot, widget, timeout=20_000):
    wait_idle(qtbot, widget, timeout)


# runs every level to max_steps (no plateau/target stop) so that a fit lasts long enough to act on
LONG = {
    "plateau_rel_tol": 0.0,
    "final_plateau_rel_tol": 0.0,
    "target_psnr": 100.0,
    "weight_bits": None,
}


@pytest.fixture(scope="module")
def camera64() -> np.ndarray:
    return skdata.camera()[::8, ::8].copy()  # 64x64 uint8


@pytest.fixture(scope="module")
def astronaut64() -> np.ndarray:
    return skdata.astronaut()[::8, ::8].copy()  # 64x64x3 uint8


def _wait_step(qtbot, widget, level=None, timeout=20_000) -> None:
    def ok():
        p = widget.progress
        return p is not None and p.step > 0 and (level is None or p.level == level)

    qtbot.waitUntil(ok, timeout=timeout)


def _expected_labels(model) -> np.ndarray:
    """Level-0 block grid: 1 + finest level with an MLP over the cell (computed independently)."""
    grid0 = model.levels[0].grid.grid_shape
    labels = np.zeros(grid0, dtype=int)
    for idx in np.ndindex(*grid0):
        for j in range(model.n_levels):
            mask = model.levels[j].active_mask()
            if mask[tuple(i // 2**j for i in idx)]:
                labels[idx] = j + 1
                break
    return labels


def _notifications(monkeypatch) -> list[str]:
    """Messages passed to napari's show_error (as the widget imports it at call time)."""
    import napari.utils.notifications as notifications

    messages: list[str] = []
    original = notifications.show_error

    def capture(message, *args, **kwargs):
        messages.append(str(message))
        return original(message, *args, **kwargs)

    monkeypatch.setattr(notifications, "show_error", capture)
    return messages


# ------------------------------------------------------------- worker (no GUI needed)
def _run_messages(image, config, handle_frames: bool, **kwargs):
    from napari_miner._napari._worker import FitControl, FitRequest, LevelData, fit_messages

    control = FitControl()
    messages = []
    for message in fit_messages(FitRequest(image, config, "cpu", rgb=False), control, **kwargs):
        messages.append(message)
        if handle_frames and isinstance(message, LevelData) and message.kind == "preview":
            control.frame_handled()
    assert control.done.is_set()
    return messages


def test_worker_messages_are_throttled(camera64):
    import time

    from napari_miner._napari._worker import Done, LevelData, Status

    config = MinerConfig(n_levels=3, block_size=8, max_steps=150, progress_every=1, **LONG)
    t0 = time.monotonic()
    messages = _run_messages(
        camera64, config, handle_frames=True, ui_interval_s=0.25, refresh_interval_s=0.5
    )
    elapsed = time.monotonic() - t0
    statuses = [m for m in messages if isinstance(m, Status)]
    previews = [m for m in messages if isinstance(m, LevelData) and m.kind == "preview"]
    starts = [m for m in messages if isinstance(m, LevelData) and m.kind == "start"]
    finals = [m for m in messages if isinstance(m, LevelData) and m.kind == "final"]
    # 450 Progress events: statuses at most every 0.25 s (plus 2 per level: start and finish)
    assert len(statuses) <= elapsed / 0.25 + 2 * 3 + 1
    assert len(previews) <= elapsed / 0.5 + 3 + 1
    assert [m.level for m in finals] == [2, 1, 0]
    assert [m.level for m in starts] == [1, 0]  # the coarser estimate, upsampled
    # every PSNR point reaches the plot even though statuses are throttled
    done = messages[-1]
    assert isinstance(done, Done) and not done.stopped and done.progress.finished
    steps = sum(level.stats["steps"] for level in done.model.levels)
    assert sum(len(s.history) for s in statuses) == steps + 3  # + each level's final PSNR
    assert [s.progress.level for s in statuses][-1] == 0
    np.testing.assert_array_equal(finals[-1].data, done.model.decode(0))
    np.testing.assert_array_equal(starts[-1].data.shape, camera64.shape)


def test_worker_never_queues_more_than_one_preview(camera64):
    from napari_miner._napari._worker import Done, LevelData, Status
    from napari_miner.core.overlay import active_block_labels

    config = MinerConfig(n_levels=3, block_size=8, max_steps=60, **LONG)
    messages = _run_messages(camera64, config, handle_frames=False, refresh_interval_s=0.0)
    previews = [m for m in messages if isinstance(m, LevelData) and m.kind == "preview"]
    assert len(previews) == 1  # the GUI never handled it, so no second one was decoded
    # the live overlay ends as the model's (finest level with an MLP wins)
    done = messages[-1]
    assert isinstance(done, Done)
    overlays = [m.labels for m in messages if isinstance(m, Status) and m.labels is not None]
    np.testing.assert_array_equal(overlays[-1], active_block_labels(done.model)[0])
    np.testing.assert_array_equal(done.labels, overlays[-1])


def test_outcome_text_says_whether_the_target_was_reached():
    from napari_miner.fitting.progress import FitProgress

    progress = FitProgress(n_levels=3, max_steps=10, grid0=(2, 2))
    progress.finished, progress.reason, progress.psnr, progress.elapsed_s = (
        True,
        "max_steps",
        38.214,
        2.0,
    )
    text = progress.describe()
    expected = "done (max_steps: target 40 dB not reached (raise max_steps)) · PSNR 38.21 dB"
    assert text.startswith(expected), text
    progress.reason = "target"
    assert progress.describe().startswith("done (target reached) · PSNR 38.21 dB")
    progress.reason, progress.iou, progress.target_iou = "completed", 0.95, 0.99
    text = progress.describe()
    assert "done (completed: target 40 dB or IoU 0.99 not reached)" in text and "IoU 0.950" in text


# ------------------------------------------------------------------------------ form
def test_input_selector_and_defaults(make_napari_viewer):
    import torch

    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((8, 8), dtype=np.uint8), name="labels")
    viewer.add_points([[1, 1]], name="points")
    viewer.add_image(np.zeros((16, 16)), name="a")
    widget = _widget(viewer)
    assert widget.inputs.input_choices() == ["a"]
    viewer.add_image(np.zeros((16, 16, 3), dtype=np.uint8), name="b", rgb=True)
    assert widget.inputs.input_choices() == ["a", "b"]
    assert widget.inputs.selected_layer().name == "a"  # the choice is kept
    viewer.layers["a"].name = "renamed"
    assert widget.inputs.input_choices() == ["renamed", "b"]
    viewer.layers.remove("renamed")
    assert widget.inputs.input_choices() == ["b"]
    assert widget.inputs.selected_layer().name == "b"

    # the form starts at MinerConfig's defaults (the test helper changed three of them)
    fresh = MinerWidget(viewer)
    defaults = MinerConfig()
    assert fresh.config() == defaults
    fresh.deleteLater()
    cuda_item = widget.inputs.device_combo.model().item(2)
    assert widget.inputs.device_combo.itemText(2) == "cuda"
    assert cuda_item.isEnabled() == torch.cuda.is_available()


def test_unavailable_cuda_and_bad_settings_notify(make_napari_viewer, monkeypatch):
    import napari_miner._napari.widget as widget_module

    messages = _notifications(monkeypatch)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), dtype=np.float32), name="img")
    widget = _widget(viewer)
    monkeypatch.setattr(widget_module, "cuda_available", lambda: False)
    widget.inputs.device_combo.setCurrentText("cuda")
    assert not widget.start()
    assert "CUDA is not available" in messages[-1]
    widget.inputs.device_combo.setCurrentText("cpu")
    # an invalid combination is a message under the form, and no fit
    assert widget.settings.error_label.isHidden()
    widget.settings.set_values(target_iou=0.99)  # needs iou_threshold
    assert not widget.settings.error_label.isHidden()
    assert "target_iou needs iou_threshold" in widget.settings.error_label.text()
    assert not widget.start()
    assert "target_iou" in messages[-1]
    assert not widget.running and widget.fit_button.text() == "Fit"
    widget.settings.set_values(iou_threshold=0.5)
    assert widget.settings.error_label.isHidden()


# ---------------------------------------------------------------------------- fitting
def test_fit_shows_live_levels_overlay_and_final_model(
    make_napari_viewer, qtbot, camera64, tmp_path, monkeypatch
):
    viewer = make_napari_viewer()
    viewer.add_image(camera64, name="cam")
    widget = _widget(viewer)
    overlays: list[np.ndarray] = []
    from napari_miner._napari import _live_layers

    original = _live_layers.LiveLayers.show_overlay

    def record(self, labels):
        overlays.append((widget.model is None, labels.copy()))
        return original(self, labels)

    monkeypatch.setattr(_live_layers.LiveLayers, "show_overlay", record)
    _click(qtbot, widget.fit_button)
    assert widget.running and widget.fit_button.text() == "Stop"
    assert not widget.results.save_button.isEnabled()
    assert not widget.settings.isEnabled() and not widget.inputs.isEnabled()
    names = [f"cam · MINER level {j}" for j in range(3)]
    qtbot.waitUntil(lambda: all(n in viewer.layers for n in names), timeout=20_000)
    qtbot.waitUntil(lambda: "cam · MINER active blocks" in viewer.layers, timeout=20_000)
    _wait_idle(qtbot, widget)

    model = widget.model
    assert model is not None and model.shape == camera64.shape
    assert widget.results.save_button.isEnabled() and widget.fit_button.text() == "Fit"
    assert widget.settings.isEnabled() and widget.inputs.isEnabled()
    assert not widget.results.mesh_button.isEnabled()  # meshes are for volumes
    status = widget.status_label.text()
    assert status == widget.progress.describe(), status
    assert status.startswith("done (target reached)") or "target 40 dB not reached" in status
    assert "IoU" not in status
    assert viewer.dims.ndisplay == 2
    # the overlay was drawn while training, before the model existed
    assert any(before_done for before_done, _ in overlays)
    # finished model: label > 0 exactly where some level has an MLP, value = 1 + finest level
    overlay = viewer.layers["cam · MINER active blocks"]
    expected = _expected_labels(model)
    np.testing.assert_array_equal(overlay.data, expected)
    assert overlay.data.shape == model.levels[0].grid.grid_shape
    np.testing.assert_allclose(overlay.scale, [8, 8])
    np.testing.assert_allclose(overlay.translate, [3.5, 3.5])
    # the level layers hold the finished levels; the lazy multiscale layer is the result
    for j in range(3):
        layer = viewer.layers[names[j]]
        assert layer.data.shape == model.level_shape(j)
        assert layer.data.dtype == camera64.dtype
        np.testing.assert_allclose(layer.scale, [2**j] * 2)
        np.testing.assert_allclose(layer.translate, [(2**j - 1) / 2] * 2)
    final = viewer.layers["cam · MINER"]
    assert final.multiscale and final.data[0].shape == camera64.shape
    pyramid = final.metadata[REFRESHER_KEY].pyramid  # tiles decoded in the background
    np.asarray(final.data[0])
    assert pyramid.wait_until_idle(30)
    np.testing.assert_array_equal(np.asarray(final.data[0]), model.decode(0))
    assert viewer.layers[-1] is overlay or viewer.layers[-1].name == overlay.name
    # progress line, plot and progress bar
    assert widget.plot.points and all(np.isfinite(widget.plot.ys))
    assert widget.progress.level == 0 and widget.progress.finished
    assert widget._pbar is None  # closed
    assert widget._pbar_value == PBAR_STEPS  # the whole fit
    # Save model… writes <layer>.miner.zarr
    assert widget.results.default_save_name() == "cam.miner.zarr"
    target = tmp_path / "cam.miner.zarr"
    monkeypatch.setattr(widget.results, "ask_save_path", lambda default: str(target))
    _click(qtbot, widget.results.save_button)
    np.testing.assert_array_equal(load(target).decode(0), model.decode(0))


def test_stop_mid_fit_keeps_a_usable_partial_model(make_napari_viewer, qtbot, camera64, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(camera64, name="cam")
    widget = _widget(viewer, steps=100_000, **LONG)
    _click(qtbot, widget.fit_button)
    _wait_step(qtbot, widget, level=1)
    _click(qtbot, widget.fit_button)  # "Stop"
    _wait_idle(qtbot, widget)
    model = widget.model
    assert model is not None
    assert "stopped" in widget.status_label.text()
    assert model.decode(0).shape == camera64.shape
    assert model.levels[2].n_mlps > 0 and model.levels[1].n_mlps > 0
    assert model.levels[0].n_mlps == 0  # never reached
    assert widget.results.save_button.isEnabled()
    assert widget.progress.step < 100_000 and not widget.progress.finished
    assert "cam · MINER" in viewer.layers
    saved = widget.results.save(str(tmp_path / "partial"))
    assert saved == str(tmp_path / "partial.miner.zarr")
    assert load(tmp_path / "partial.miner.zarr").n_levels == 3


def test_pause_and_resume(make_napari_viewer, qtbot, camera64):
    viewer = make_napari_viewer()
    viewer.add_image(camera64, name="cam")
    widget = _widget(viewer, steps=100_000, **LONG)
    _click(qtbot, widget.fit_button)
    _wait_step(qtbot, widget)
    _click(qtbot, widget.pause_button)
    assert widget.paused and widget.pause_button.text() == "Resume"
    qtbot.wait(400)  # let an update already in flight arrive
    paused_at = (widget.progress.level, widget.progress.step)
    qtbot.wait(800)
    assert (widget.progress.level, widget.progress.step) == paused_at
    assert "paused" in widget.status_label.text()
    _click(qtbot, widget.pause_button)
    assert not widget.paused and widget.pause_button.text() == "Pause"
    qtbot.waitUntil(
        lambda: (widget.progress.level, widget.progress.step) != paused_at, timeout=10_000
    )
    _click(qtbot, widget.pause_button)  # pause again, then stop while paused
    assert widget.paused
    _click(qtbot, widget.fit_button)
    _wait_idle(qtbot, widget, timeout=5_000)
    assert "stopped" in widget.status_label.text() and widget.model is not None


def test_training_error_becomes_a_notification(make_napari_viewer, qtbot, camera64, monkeypatch):
    import napari_miner.core.bank_fit as bank_fit

    def boom(*args, **kwargs):
        raise RuntimeError("boom from torch")

    monkeypatch.setattr(bank_fit, "bank_sse_and_grads", boom)
    messages = _notifications(monkeypatch)
    viewer = make_napari_viewer()
    viewer.add_image(camera64, name="cam")
    widget = _widget(viewer)
    _click(qtbot, widget.fit_button)
    _wait_idle(qtbot, widget)
    assert any("boom from torch" in m for m in messages), messages
    assert widget.fit_button.text() == "Fit" and widget.fit_button.isEnabled()
    assert not widget.pause_button.isEnabled()
    assert widget.settings.isEnabled()
    assert "failed" in widget.status_label.text()
    assert widget.model is None and not widget.results.save_button.isEnabled()


def _start_endless_fit(make_napari_viewer, qtbot, image):
    """A viewer whose widget is in the middle of a fit that would not end by itself."""
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cam")
    widget = _widget(viewer, steps=100_000, **LONG)
    _click(qtbot, widget.fit_button)
    _wait_step(qtbot, widget)
    return viewer, widget, widget.fit.worker, widget.fit.control


def test_closing_the_viewer_stops_the_worker(make_napari_viewer, qtbot, camera64):
    viewer, widget, worker, control = _start_endless_fit(make_napari_viewer, qtbot, camera64)
    viewer.close()
    assert control.done.is_set()  # the generator ended (its thread is free)
    assert not worker.is_running
    assert widget.fit is None and not widget.running
    assert QThreadPool.globalInstance().waitForDone(5000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0


def test_closing_the_dock_widget_stops_the_worker(make_napari_viewer, qtbot, camera64):
    viewer, widget, worker, control = _start_endless_fit(make_napari_viewer, qtbot, camera64)
    viewer.window.remove_dock_widget(widget)
    assert control.done.is_set() and not worker.is_running and not widget.running
    assert QThreadPool.globalInstance().waitForDone(5000)
    widget.deleteLater()


def test_public_proxy_viewer_rgb_fit(make_napari_viewer_proxy, qtbot, astronaut64):
    """napari's plugin proxy raises if napari objects are set from another thread."""
    from napari.utils._proxies import PublicOnlyProxy

    viewer = make_napari_viewer_proxy()
    assert isinstance(viewer, PublicOnlyProxy)
    viewer.add_image(astronaut64, name="astro")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        widget = _widget(viewer)
        _click(qtbot, widget.fit_button)
        _wait_idle(qtbot, widget)
    private = [w for w in caught if "Private attribute access" in str(w.message)]
    assert not private, [str(w.message) for w in private]
    assert "done" in widget.status_label.text(), widget.status_label.text()
    for j in range(3):
        layer = viewer.layers[f"astro · MINER level {j}"]
        assert layer.rgb and layer.data.shape == (*widget.model.level_shape(j), 3)
    assert viewer.layers["astro · MINER"].rgb


def test_scaled_translated_input(make_napari_viewer, qtbot, camera64):
    viewer = make_napari_viewer()
    scale, translate = np.array([2.0, 0.5]), np.array([10.0, -3.0])
    viewer.add_image(camera64, name="cam", scale=scale, translate=translate)
    widget = _widget(viewer)
    _click(qtbot, widget.fit_button)
    _wait_idle(qtbot, widget)
    source = viewer.layers["cam"]
    for j in range(3):
        layer = viewer.layers[f"cam · MINER level {j}"]
        np.testing.assert_allclose(layer.scale, 2**j * scale)
        np.testing.assert_allclose(layer.translate, translate + (2**j - 1) / 2 * scale)
        # level pixel (i, k) is centred on the input pixels it summarises
        f = 2**j
        for i, k in [(0, 0), (1, 2)]:
            centre = (i * f + (f - 1) / 2, k * f + (f - 1) / 2)
            np.testing.assert_allclose(layer.data_to_world((i, k)), source.data_to_world(centre))
    overlay = viewer.layers["cam · MINER active blocks"]
    np.testing.assert_allclose(overlay.scale, 8 * scale)
    np.testing.assert_allclose(overlay.translate, translate + 3.5 * scale)
    # cell (1, 2) covers input pixels [8, 16) x [16, 24)
    np.testing.assert_allclose(overlay.data_to_world((1, 2)), source.data_to_world((11.5, 19.5)))
    final = viewer.layers["cam · MINER"]
    np.testing.assert_allclose(final.scale, scale)
    np.testing.assert_allclose(final.translate, translate)


def test_volume_input(make_napari_viewer, qtbot):
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:24, :32, :32]
    volume = np.sin(x / 5.0) + np.cos(y / 7.0) + z / 24.0 + 0.05 * rng.random((24, 32, 32))
    viewer = make_napari_viewer()
    viewer.add_image(volume.astype(np.float32), name="vol", scale=(3.0, 1.0, 1.0))
    widget = _widget(viewer, levels=2, steps=20)
    _click(qtbot, widget.fit_button)
    _wait_idle(qtbot, widget)
    assert "done" in widget.status_label.text(), widget.status_label.text()
    level1 = viewer.layers["vol · MINER level 1"]
    assert level1.data.shape == (12, 16, 16)
    np.testing.assert_allclose(level1.scale, [6.0, 2.0, 2.0])
    np.testing.assert_allclose(level1.translate, [1.5, 0.5, 0.5])
    overlay = viewer.layers["vol · MINER active blocks"]
    assert overlay.data.shape == (3, 4, 4)
    np.testing.assert_array_equal(overlay.data, _expected_labels(widget.model))
    # in 3D napari renders only a multiscale layer's coarsest level: the result is level 0
    final = viewer.layers["vol · MINER"]
    assert not final.multiscale and final.data.shape == volume.shape
    np.testing.assert_array_equal(final.data, widget.model.decode(0))
    assert viewer.dims.ndisplay == 3 and final.rendering == "mip"  # an intensity volume


# ------------------------------------------------------------------------ screenshot
def _as_gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    return image[..., :3].mean(axis=-1) if image.ndim == 3 else image


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = resize(_as_gray(a), (32, 32), anti_aliasing=True).ravel()
    b = resize(_as_gray(b), (32, 32), anti_aliasing=True).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_canvas_shows_the_reconstruction(make_napari_viewer, qtbot):
    image = skdata.camera()[::4, ::4].copy()  # 128x128
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="cam")
    widget = _widget(viewer, steps=60)
    _click(qtbot, widget.fit_button)
    _wait_idle(qtbot, widget, timeout=40_000)
    for layer in viewer.layers:
        layer.visible = layer.name == "cam · MINER"
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    canvas = np.array(shot.shape[:2], dtype=float)
    centre = np.asarray(camera.center, dtype=float)[-2:]
    lo = np.round((np.array([-0.5, -0.5]) - centre) * camera.zoom + canvas / 2).astype(int)
    hi = np.round((np.array(image.shape) - 0.5 - centre) * camera.zoom + canvas / 2).astype(int)
    crop = shot[lo[0] : hi[0], lo[1] : hi[1]]
    assert _correlation(crop, image) > 0.9
    assert _correlation(crop, image) > _correlation(crop, image[::-1]) + 0.3
    viewer.layers["cam · MINER"].visible = False  # control: nothing left that looks like it
    empty = viewer.screenshot(canvas_only=True, flash=False)[lo[0] : hi[0], lo[1] : hi[1]]
    assert _as_gray(empty).std() < 1.0


def test_fit_from_a_zarr_path_out_of_core(make_napari_viewer, qtbot, tmp_path):
    import dask.array as da
    import zarr

    from napari_miner._napari._inputs import default_store_path

    image = skdata.camera()[::4, ::4].copy()  # 128x128: 16x16 blocks of 8, 4 tiles at level 0
    source = tmp_path / "cam.zarr"
    zarr.create_array(str(source), data=image, chunks=(32, 32))
    viewer = make_napari_viewer(show=True)
    widget = _widget(viewer, steps=40)
    widget.inputs.path_edit.setText(str(source))
    assert not widget.inputs.input_combo.isEnabled()  # the path replaces the layer selector
    assert widget.inputs.store_edit.placeholderText() == str(tmp_path / "cam.miner.zarr")
    widget.inputs.budget_edit.setText("4MB")
    _click(qtbot, widget.fit_button)
    names = [f"cam.zarr · MINER level {j}" for j in range(3)]
    _wait_idle(qtbot, widget, timeout=60_000)
    assert "done" in widget.status_label.text(), widget.status_label.text()
    assert (widget.progress.tiles_done, widget.progress.n_tiles) == (4, 4)  # tile by tile
    model = widget.model
    assert model.metadata["fit_status"] == "complete"
    np.testing.assert_array_equal(load(default_store_path(str(source))).decode(), model.decode())
    # the live level layers are lazy multiscale views of the store
    for j, name in enumerate(names):
        layer = viewer.layers[name]
        assert layer.multiscale and isinstance(layer.data[0], da.Array)
        np.testing.assert_array_equal(np.asarray(layer.data[0]), model.decode(j))
    for layer in viewer.layers:
        layer.visible = layer.name == "cam.zarr · MINER"
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert _as_gray(shot).std() > 10  # not a blank canvas
    assert "cam.zarr · MINER active blocks" in viewer.layers


def test_a_bad_zarr_path_is_reported(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_miner._napari import _inputs

    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.inputs.path_edit.setText(str(tmp_path / "missing.zarr"))
    assert not widget.start()
    assert errors and "missing.zarr: no such file or directory" in errors[0]
    assert _inputs.default_store_path("/data/slide.ome.zarr/") == "/data/slide.miner.zarr"
