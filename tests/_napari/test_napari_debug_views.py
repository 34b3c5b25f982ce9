"""The debugging views of the MINER dock widget (under Xvfb): error map, block states, per-level
PSNR and the block under the cursor; and that they leave the fitted model unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata
from widget_helpers import make_widget, wait_idle

from napari_miner import MinerConfig
from napari_miner._napari._debug_layers import (
    ERROR_COLORMAP,
    STATE_COLORS,
    error_layer_name,
    states_layer_name,
)
from napari_miner.core.block_state import BlockState
from napari_miner.core.error_map import ERROR_RANGE_PERCENT

pytestmark = pytest.mark.viewer

LIMITS = [0.0, ERROR_RANGE_PERCENT]


@pytest.fixture(scope="module")
def camera64() -> np.ndarray:
    return skdata.camera()[::8, ::8].copy()  # 64x64 uint8


# ------------------------------------------------------------- worker (no GUI needed)
def _messages(image, config, debug):
    from napari_miner._napari._worker import FitControl, FitRequest, LevelData, fit_messages

    control = FitControl()
    messages = []
    for message in fit_messages(FitRequest(image, config, "cpu"), control, 0.0, 0.0, debug=debug):
        messages.append(message)
        if isinstance(message, LevelData) and message.kind == "preview":
            control.frame_handled()
    return messages


def test_debug_views_leave_the_model_unchanged(camera64):
    from napari_miner._napari._worker import LevelData, Status

    config = MinerConfig(n_levels=2, block_size=8, max_steps=20, progress_every=5)
    on, off = _messages(camera64, config, True), _messages(camera64, config, False)
    for j in range(2):
        np.testing.assert_array_equal(on[-1].model.decode(level=j), off[-1].model.decode(level=j))
    frames = [m for m in on if isinstance(m, LevelData)]
    assert frames and all(m.error is not None and m.error.shape == m.data.shape for m in frames)
    views = [m.blocks for m in on if isinstance(m, Status) and m.blocks is not None]
    assert {v.level for v in views} == {0, 1} and all(v.error is None for v in views)
    assert on[-1].blocks.level == 0 and on[-1].blocks.report.shape == (8, 8)
    assert all(m.error is None for m in off if isinstance(m, LevelData))
    assert all(m.blocks is None for m in off if isinstance(m, Status)) and off[-1].blocks is None


# ------------------------------------------------------------------------- the widget
def test_error_map_block_states_psnr_and_hover_after_a_fit(
    make_napari_viewer, qtbot, camera64, monkeypatch
):
    from napari_miner._napari._debug_layers import DebugLayers

    viewer = make_napari_viewer()
    viewer.add_image(camera64, name="cam")
    widget = make_widget(viewer)
    limits_seen = []
    original = DebugLayers.show_pixel_error

    def record(self, level, error):
        layer = original(self, level, error)
        limits_seen.append((level, list(layer.contrast_limits)))
        return layer

    monkeypatch.setattr(DebugLayers, "show_pixel_error", record)
    assert widget.start()
    wait_idle(qtbot, widget)
    model = widget.model
    # the error map: per pixel at the level shown, on a fixed range stated in its name
    assert {level for level, _ in limits_seen} == {0, 1, 2}  # every level, while training
    assert all(limits == LIMITS for _, limits in limits_seen)  # never rescaled
    error = viewer.layers[error_layer_name("cam")]
    assert "0–5 % of range" in error.name and error.colormap.name == ERROR_COLORMAP
    assert list(error.contrast_limits) == LIMITS
    assert widget.debug.error_mode == "pixel" and widget.debug.error_level == 0
    span = float(camera64.max()) - float(camera64.min())
    expected = np.abs(model.decode(0).astype(float) - camera64) / span * 100
    np.testing.assert_allclose(error.data, expected, atol=1e-3)
    np.testing.assert_allclose(error.scale, [1, 1])
    text = widget.debug_panel.error_label.text()
    assert text == "error map of level 0: per pixel", text
    # the block states of level 0: pruned exactly where level 0 has no MLP
    states = viewer.layers[states_layer_name("cam")]
    assert states.data.shape == model.levels[0].grid.grid_shape == (8, 8)
    np.testing.assert_array_equal(states.data == BlockState.PRUNED, ~model.levels[0].active_mask())
    assert set(np.unique(states.data)) <= {int(s) for s in STATE_COLORS}
    np.testing.assert_allclose(states.scale, [8, 8])
    for state, color in STATE_COLORS.items():
        rgba = states.colormap.map(np.array([int(state)]))[0]
        np.testing.assert_allclose(rgba[:3], _rgb(color), atol=1 / 255)
    assert states.colormap.map(np.array([0]))[0][3] == 0  # unknown: transparent
    assert list(states.features["state"]) == [s.label for s in BlockState]
    legend = widget.debug_panel.legend
    assert [legend[s].text() for s in STATE_COLORS] == [s.label for s in STATE_COLORS]
    # hidden until shown; while one is shown, the active-blocks overlay is hidden
    assert not error.visible and not states.visible
    overlay = widget.live.overlay
    widget.debug_panel.error_check.setChecked(True)
    widget.debug_panel.states_check.setChecked(True)
    assert error.visible and states.visible and not overlay.visible
    assert viewer.layers[-1] is overlay or viewer.layers[-1].name == overlay.name
    widget.debug_panel.states_check.setChecked(False)
    assert not overlay.visible and not states.visible
    widget.debug_panel.error_check.setChecked(False)
    assert overlay.visible and not error.visible
    # per-level PSNR and state
    texts = widget.debug_panel.level_texts()
    assert sorted(texts) == [0, 1, 2]
    for psnr, state in texts.values():
        assert psnr.endswith(" dB") and np.isfinite(float(psnr.split()[0])), psnr
        assert state.startswith("done · "), state
    assert texts[0][0] == f"{widget.progress.psnr:.2f} dB"
    # the block under the cursor: level, block, state, parameters, loss
    index = tuple(int(i) for i in np.argwhere(states.data != BlockState.PRUNED)[0])
    viewer.cursor.position = tuple(8.0 * i + 3.5 for i in index)
    info = widget.debug_panel.info_label.text()
    state = BlockState(int(states.data[index])).label
    assert info.startswith(f"level 0 · block {index} · {state} · "), info
    assert "parameters" in info and "loss (MSE)" in info and " dB" in info
    n_params = int(info.split(" · ")[3].split()[0].replace(",", ""))
    assert n_params > 0
    viewer.cursor.position = (-50.0, -50.0)  # outside: the hint again
    assert "hover" in widget.debug_panel.info_label.text()


def _rgb(color: str) -> list[float]:
    return [int(color[k : k + 2], 16) / 255 for k in (1, 3, 5)]


def test_out_of_core_fits_show_per_block_errors(make_napari_viewer, qtbot, tmp_path):
    import zarr

    image = skdata.camera()[::4, ::4].copy()  # 128x128: 16x16 blocks of 8, 4 tiles at level 0
    zarr.create_array(str(tmp_path / "cam.zarr"), data=image, chunks=(32, 32))
    viewer = make_napari_viewer()
    widget = make_widget(viewer, steps=40)
    widget.inputs.path_edit.setText(str(tmp_path / "cam.zarr"))
    widget.inputs.budget_edit.setText("4MB")
    assert widget.start()
    wait_idle(qtbot, widget, timeout=60_000)
    assert widget.progress.n_tiles == 4
    error = viewer.layers[error_layer_name("cam.zarr")]
    assert widget.debug.error_mode == "block"
    assert error.data.shape == (16, 16) and list(error.contrast_limits) == LIMITS
    np.testing.assert_allclose(error.scale, [8, 8])
    text = widget.debug_panel.error_label.text()
    assert "per block" in text and "out-of-core" in text, text
    states = viewer.layers[states_layer_name("cam.zarr")]
    assert states.data.shape == (16, 16) and BlockState.UNKNOWN not in np.unique(states.data)
    # per-block error: the RMSE of the decoded level over each block, from the tile's statistics
    decoded = widget.model.decode(0).astype(float)
    blocks = ((decoded - image) / (float(image.max()) - float(image.min()))) ** 2
    rmse = 100 * np.sqrt(blocks.reshape(16, 8, 16, 8).mean(axis=(1, 3)))
    np.testing.assert_allclose(error.data, rmse, rtol=1e-4, atol=1e-4)


def test_shown_debug_layers_stay_above_the_layers_added_later(make_napari_viewer, qtbot, camera64):
    viewer = make_napari_viewer()
    viewer.add_image(camera64, name="cam")
    widget = make_widget(viewer)
    widget.debug_panel.error_check.setChecked(True)  # before the fit: the layers come shown
    widget.debug_panel.states_check.setChecked(True)
    assert widget.start()
    wait_idle(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    shown = {error_layer_name("cam"), states_layer_name("cam")}
    assert all(viewer.layers[name].visible for name in shown)
    below = names[: min(names.index(n) for n in shown)]
    assert "cam · MINER" in below and all(f"cam · MINER level {j}" in below for j in range(3))
    assert names[-1] == "cam · MINER active blocks" and not viewer.layers[names[-1]].visible
