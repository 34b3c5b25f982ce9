"""Helpers for the tests of the MINER fit widget (importable by the tests: ``tests`` is on the path)."""

from __future__ import annotations

from typing import Any


def make_widget(viewer: Any, *, levels: int = 3, block: int = 8, steps: int = 30, **overrides: Any):
    """Dock a MinerWidget on ``viewer`` with a small, fast CPU configuration."""
    from napari_miner._napari.widget import MinerWidget

    widget = MinerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MINER fit")
    widget.levels_spin.setValue(levels)
    widget.block_spin.setValue(block)
    widget.steps_spin.setValue(steps)
    widget.device_combo.setCurrentText("cpu")
    widget.refresh_interval_s = 0.05
    widget.ui_interval_s = 0.05
    widget.config_overrides = dict(overrides)
    return widget


def click(qtbot: Any, button: Any) -> None:
    """Click an enabled button."""
    from qtpy.QtCore import Qt

    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def wait_idle(qtbot: Any, widget: Any, timeout: int = 20_000) -> None:
    """Wait until the widget's fit ended."""
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
