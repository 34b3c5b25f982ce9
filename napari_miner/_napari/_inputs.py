"""The input rows of the MINER dock widget: what to fit (an Image layer or a zarr path) and where.

Whether an input is an image or a volume follows one rule, :func:`napari_miner.core.layout.layout_of`
(its ``is_volume``), for layers and paths alike; a volume whose values are binary is an occupancy
volume. :meth:`InputPanel.input_defaults` turns that into the form's defaults.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QToolButton,
    QWidget,
)

from napari_miner.core.config import MinerConfig
from napari_miner.core.errors import InvalidInputError
from napari_miner.core.layout import InputLayout, layout_of
from napari_miner.io.schema import SUFFIX

from ._live_layers import SourceInfo

__all__ = ["DEVICES", "InputPanel", "binary_range", "cuda_available", "default_store_path"]

DEVICES = ("auto", "cpu", "cuda")
_BINARY_SAMPLE = 1 << 20
"""At most this many values are read to decide whether an input is binary."""


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def default_store_path(input_path: str) -> str:
    """``<input name>.miner.zarr`` next to the input (its ``.zarr``/``.ome.zarr`` suffix dropped)."""
    path = os.path.abspath(os.path.expanduser(input_path.rstrip("/\\")))
    name = os.path.basename(path)
    for suffix in (".ome.zarr", ".zarr"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return os.path.join(os.path.dirname(path), f"{name or 'fit'}{SUFFIX}")


def layer_data(layer: Any) -> Any:
    """The full-resolution data of an Image layer (level 0 of a multiscale one)."""
    return layer.data[0] if layer.multiscale else layer.data


def binary_range(layer: Any) -> tuple[float, float] | None:
    """``(low, high)`` of a binary (occupancy) image layer, or ``None`` if it is not binary.

    Binary: a bool dtype, or at most two distinct values (a single value counts if it is 0 or 1).
    Large inputs are judged on a subsample: a strided one of an in-memory array, the central box
    of a lazy (dask, zarr) one.
    """
    data = layer_data(layer)
    dtype = np.dtype(data.dtype)
    if dtype.kind == "b":
        return (0.0, 1.0)
    if dtype.kind not in "iuf":
        return None
    shape = tuple(int(s) for s in data.shape)
    if isinstance(data, np.ndarray):
        step = max(1, math.ceil((data.size / _BINARY_SAMPLE) ** (1.0 / max(1, data.ndim))))
        sample = data[(slice(None, None, step),) * data.ndim]
    else:
        side = max(1, int(_BINARY_SAMPLE ** (1.0 / max(1, len(shape)))))
        box = tuple(slice(max(0, (s - side) // 2), max(0, (s - side) // 2) + side) for s in shape)
        sample = np.asarray(data[box])
    if sample.size == 0:
        return None
    lo, hi = float(sample.min()), float(sample.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    if lo == hi:
        return (0.0, 1.0) if lo in (0.0, 1.0) else None
    if not np.all((sample == sample.min()) | (sample == sample.max())):
        return None
    return (lo, hi)


class InputPanel(QWidget):
    """Input layer, zarr path (with its model store and memory budget) and device.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose Image layers are offered.
    parent : QWidget, optional
        Qt parent.

    Attributes
    ----------
    labels : list of QLabel
        The labels of the rows.

    Signals
    -------
    changed
        The input may have changed (another layer, or a path entered).
    """

    changed = Signal()

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.input_combo = QComboBox()
        self.input_combo.setToolTip("Image layer to fit (2D, RGB or 3D)")
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("or a zarr / OME-Zarr path")
        self.path_edit.setToolTip(
            "fit an image or volume straight from a zarr array, group path or OME-Zarr image, out "
            "of core: read region by region, trained tile by tile into the model store below "
            "(a fit interrupted there resumes)"
        )
        self.browse_button = QToolButton()
        self.browse_button.setText("…")
        self.browse_button.setToolTip("choose a zarr directory")
        self.store_edit = QLineEdit()
        self.store_edit.setToolTip(
            "model store an out-of-core fit writes tile by tile (default: next to the input)"
        )
        self.budget_edit = QLineEdit("1GiB")
        self.budget_edit.setToolTip(
            "memory an out-of-core fit may use for its tensors; sets the tile size"
        )
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setToolTip("'auto' uses CUDA when available")
        if not cuda_available():
            item = self.device_combo.model().item(DEVICES.index("cuda"))
            item.setEnabled(False)
            item.setToolTip("CUDA is not available on this machine")

        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit)
        path_row.addWidget(self.browse_button)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        names = ("input", "", "model store", "memory budget", "device")
        self.labels = [QLabel(name) for name in names]
        fields = (self.input_combo, path_row, self.store_edit, self.budget_edit, self.device_combo)
        for label, field in zip(self.labels, fields, strict=True):
            form.addRow(label, field)

        self.path_edit.textChanged.connect(self._on_path_changed)
        self.path_edit.editingFinished.connect(self.changed)  # not on every key: it opens the path
        self.browse_button.clicked.connect(self._on_browse_clicked)
        self.input_combo.currentIndexChanged.connect(self.changed)
        for signal, slot in self._viewer_hooks():
            signal.connect(slot)
        for layer in self.viewer.layers:
            layer.events.name.connect(self.refresh)
        self._connected = True
        self.refresh()

    # ------------------------------------------------------------------ choices
    def _viewer_hooks(self) -> list[tuple[Any, Callable[..., None]]]:
        events = self.viewer.layers.events
        return [
            (events.inserted, self._on_inserted),
            (events.removed, self.refresh),
            (events.moved, self.refresh),
        ]

    def _on_inserted(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        """Offer every Image layer of the viewer (not labels, points, …); keep the choice."""
        from napari.layers import Image

        if not self._connected:
            return
        current = self.input_combo.currentData()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.input_combo.blockSignals(True)
        self.input_combo.clear()
        for name in names:
            self.input_combo.addItem(name, name)
        if current in names:
            self.input_combo.setCurrentIndex(names.index(current))
        elif names:  # prefer an input over our own outputs
            plain = [n for n in names if " · MINER" not in n]
            self.input_combo.setCurrentIndex(names.index((plain or names)[0]))
        self.input_combo.blockSignals(False)
        self.changed.emit()

    def disconnect_viewer(self) -> None:
        """Stop following the viewer's layers (the widget or the viewer closes)."""
        self._connected = False
        try:
            for signal, slot in self._viewer_hooks():
                signal.disconnect(slot)
            for layer in self.viewer.layers:
                layer.events.name.disconnect(self.refresh)
        except Exception:  # the viewer may already be half torn down
            pass

    def input_choices(self) -> list[str]:
        """Names offered by the input selector."""
        return [self.input_combo.itemText(i) for i in range(self.input_combo.count())]

    def selected_layer(self) -> Any:
        """The Image layer chosen as input, or None."""
        name = self.input_combo.currentData()
        if name is None or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    # -------------------------------------------------------------------- paths
    def _on_path_changed(self, text: str) -> None:
        text = text.strip()
        self.store_edit.setPlaceholderText(default_store_path(text) if text else "")
        self.input_combo.setEnabled(not text)

    def _on_browse_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Zarr image or volume to fit")
        if path:
            self.path_edit.setText(path)
            self.changed.emit()

    def path_source(self) -> Any:
        """The input opened (lazily) from the path field, or None when the field is empty.

        Raises
        ------
        InvalidInputError
            If the path is not a readable zarr array, group or OME-Zarr image.
        """
        from napari_miner.io.source import open_input

        path = self.path_edit.text().strip()
        return open_input(os.path.expanduser(path)) if path else None

    def store_path(self) -> str:
        """The model store of an out-of-core fit: the field, or ``<input>.miner.zarr`` beside it."""
        text = self.store_edit.text().strip()
        if text:
            return os.path.expanduser(text)
        return default_store_path(self.path_edit.text().strip())

    def set_running(self, running: bool) -> None:
        """Lock the inputs while a fit runs."""
        self.setEnabled(not running)
        self.input_combo.setEnabled(not self.path_edit.text().strip())

    def device(self) -> str:
        """The chosen device: ``"auto"``, ``"cpu"`` or ``"cuda"``."""
        return self.device_combo.currentText()

    # ------------------------------------------------------------------ inputs
    def input_defaults(self) -> MinerConfig | None:
        """The form's defaults for the chosen input.

        :meth:`MinerConfig.for_volume` for a volume (``occupancy`` for a binary one),
        :class:`MinerConfig` for an image, ``None`` if nothing usable is chosen.
        """
        try:
            _, layout, binary = self._inspect()
        except Exception:  # nothing (usable) chosen yet: the fit will say what is wrong
            return None
        return MinerConfig.for_volume(occupancy=binary()) if layout.is_volume else MinerConfig()

    def _inspect(self) -> tuple[Any, InputLayout, Callable[[], bool]]:
        """The input (a layer or an opened path), its layout and a test of whether it is binary.

        The layout's value range is not read (it is ``[0, 0]``).
        """
        source = self.path_source()
        if source is not None:
            array = source.array
            layout = layout_of(array.shape, array.dtype, 0, 0, channel_axis=source.channel_axis)
            return source, layout, lambda: array.dtype == bool
        layer = self.selected_layer()
        if layer is None:
            raise InvalidInputError("choose an Image layer (or a zarr path) to fit")
        data = layer_data(layer)
        layout = layout_of(data.shape, data.dtype, 0, 0, rgb=bool(layer.rgb))
        return layer, layout, lambda: binary_range(layer) is not None

    def fit_input(self, occupancy: bool) -> tuple[Any, SourceInfo, dict[str, Any]]:
        """What to fit, how to show it and how to read it.

        Returns the data, the display settings of its live layers and the options of
        :func:`~napari_miner.fit_iter` (layout; store and budget of a path input). With
        ``occupancy`` (the fit tracks occupancy), a volume is shown as an iso surface.

        Raises
        ------
        InvalidInputError
            If no input is chosen, the path is unreadable or the data has no usable layout.
        """
        found, layout, _ = self._inspect()
        options: dict[str, Any] = dict(rgb=layout.rgb, channel_axis=layout.channel_axis)
        if self.path_edit.text().strip():  # a path: out of core, into the model store
            budget = self.budget_edit.text().strip() or None
            options.update(store=self.store_path(), memory_budget=budget)
            return found.array, SourceInfo.from_source(found.name, layout), options
        source = SourceInfo.from_layer(found, layout)
        if source.volume and occupancy:
            source = source.with_iso_range(binary_range(found) or source.contrast_limits)
        return layer_data(found), source, options
