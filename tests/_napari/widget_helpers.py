"""Helpers for the tests of the MINER fit widget (``tests/_napari`` is on the path of its tests)."""

from __future__ import annotations

from typing import Any


def make_widget(viewer: Any, *, levels: int = 3, block: int = 8, steps: int = 30, **settings: Any):
    """Dock a MinerWidget on ``viewer`` with a small, fast CPU configuration.

    ``settings`` are further :class:`~napari_miner.MinerConfig` fields set in the form.
    """
    from napari_miner._napari.widget import MinerWidget

    widget = MinerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MINER fit")
    widget.settings.set_values(n_levels=levels, block_size=block, max_steps=steps, **settings)
    widget.inputs.device_combo.setCurrentText("cpu")
    widget.refresh_interval_s = 0.05
    widget.ui_interval_s = 0.05
    return widget


def click(qtbot: Any, button: Any) -> None:
    """Click an enabled button."""
    from qtpy.QtCore import Qt

    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def wait_idle(qtbot: Any, widget: Any, timeout: int = 20_000) -> None:
    """Wait until the widget's fit ended."""
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
