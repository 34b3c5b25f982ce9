"""The "MINER fit" dock widget: fit an Image layer with MINER and watch it train.

Threading
---------
Training runs in a napari thread worker (:func:`napari.qt.threading.create_worker`) around the
generator :func:`~napari_miner._napari._worker.fit_messages`, which iterates
:func:`napari_miner.fit_iter`, decodes the live previews, and yields throttled plain-data messages.
napari objects are only touched here, on the main thread, in the ``worker.yielded`` handler. Every
exception in the worker is yielded as a message and shown with
:func:`napari.utils.notifications.show_error` (``worker.errored`` is connected as well).

Closing the widget (its dock) or the viewer stops the worker and waits for its thread to finish.

Volumes
-------
A 3D (non-RGB) input switches the form to :meth:`MinerConfig.for_volume`'s defaults (values edited
by hand are kept) and, for a binary input, to occupancy tracking (IoU in the progress line). The
fit turns the viewer to 3D; *Add mesh* extracts the fitted surface (marching cubes, in a thread)
as a Surface layer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ._live_layers import LiveLayers, SourceInfo
from ._plot import PsnrPlot
from ._worker import Done, Failed, FitControl, LevelData, Status, fit_messages, is_volume_layout

if TYPE_CHECKING:
    import napari

__all__ = ["MinerWidget"]

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
MODEL_SUFFIX = ".miner.zarr"
MESH_THRESHOLD = 0.5
"""Iso level of *Add mesh*, in normalised units: the middle of the input's value range."""
VOLUME_FORM_FIELDS = ("block_size", "hidden_width", "max_steps")
"""Form fields whose defaults differ between images and volumes."""
_BINARY_SAMPLE = 1 << 20
"""At most this many values are read to decide whether an input is binary."""

_WORKER_FINISHED = object()
"""Inbox marker: the worker thread finished."""


@dataclass
class _WorkerError:
    error: BaseException


_LIVE_WIDGETS: weakref.WeakSet[MinerWidget] = weakref.WeakSet()


def _shutdown_all() -> None:
    """Stop every running fit (``QApplication.aboutToQuit``)."""
    for widget in list(_LIVE_WIDGETS):
        widget.shutdown()


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class MinerWidget(QWidget):
    """Dock widget that fits the selected Image layer with MINER.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (napari passes its public-only proxy).

    Attributes
    ----------
    model : MinerModel or None
        The last fitted (or stopped) model; ``Save model…`` writes it.
    live : LiveLayers or None
        The layers of the current (or last) fit.
    last_status : Status or None
        The last progress message shown.
    ui_interval_s, refresh_interval_s : float
        Throttling: at most one progress update per ``ui_interval_s`` and one live-layer refresh
        per ``refresh_interval_s``.
    config_overrides : dict
        Extra :class:`~napari_miner.MinerConfig` settings applied on top of the form's.
    mesh_worker : WorkerBase or None
        The running *Add mesh* extraction.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari_miner import MinerConfig

        self.viewer = viewer
        self.model: Any = None
        self.live: LiveLayers | None = None
        self.last_status: Status | None = None
        self.ui_interval_s = 0.2
        self.refresh_interval_s = 1.0
        self.config_overrides: dict[str, Any] = {}
        self.worker: Any = None
        self._control: FitControl | None = None
        self._pbar: Any = None
        self._pbar_value = 0
        self._source: SourceInfo | None = None
        self._window: QObject | None = None
        self._torn_down = False
        self._inbox: deque[Any] = deque()
        self._handling = False
        self._device_used: str = "cpu"
        self._form_volume = False  # the form shows the volume defaults
        self.mesh_worker: Any = None
        self._mesh_done = threading.Event()
        self._mesh_done.set()
        self._previous_status = ""

        defaults = MinerConfig()
        self.setObjectName("MinerWidget")

        # ------------------------------------------------------------------ form
        self.input_combo = QComboBox()
        self.input_combo.setToolTip("Image layer to fit (2D, RGB or 3D)")
        self.levels_spin = _spin(1, 12, defaults.n_levels, "pyramid levels (0 = full resolution)")
        self.block_spin = _spin(2, 512, defaults.block_size, "block side in pixels")
        self.width_spin = _spin(1, 1024, defaults.hidden_width, "features per hidden layer")
        self.depth_spin = _spin(0, 16, defaults.hidden_layers, "hidden sine layers per MLP")
        self.steps_spin = _spin(1, 1_000_000, defaults.max_steps, "optimisation steps per level")
        self.psnr_spin = QDoubleSpinBox()
        self.psnr_spin.setRange(1.0, 120.0)
        self.psnr_spin.setDecimals(1)
        self.psnr_spin.setSuffix(" dB")
        self.psnr_spin.setValue(defaults.target_psnr)
        self.psnr_spin.setToolTip("stop once the full-resolution PSNR reaches this")
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        if not _cuda_available():
            item = self.device_combo.model().item(DEVICES.index("cuda"))
            item.setEnabled(False)
            item.setToolTip("CUDA is not available on this machine")
        self.device_combo.setToolTip("'auto' uses CUDA when available")
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("or a zarr / OME-Zarr path")
        self.path_edit.setToolTip(
            "fit an image or volume straight from a zarr array, group path or OME-Zarr image, out "
            "of core: read region by region, trained tile by tile into the model store below "
            "(a fit interrupted there resumes)"
        )
        self.path_edit.textChanged.connect(self._on_path_changed)
        self.browse_button = QToolButton()
        self.browse_button.setText("…")
        self.browse_button.setToolTip("choose a zarr directory")
        self.browse_button.clicked.connect(self._on_browse_clicked)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit)
        path_row.addWidget(self.browse_button)
        self.store_edit = QLineEdit()
        self.store_edit.setToolTip(
            "model store an out-of-core fit writes tile by tile (default: next to the input)"
        )
        self.budget_edit = QLineEdit("1GiB")
        self.budget_edit.setToolTip(
            "memory an out-of-core fit may use for its tensors; sets the tile size"
        )

        form = QFormLayout()
        form.addRow("input", self.input_combo)
        form.addRow("", path_row)
        form.addRow("model store", self.store_edit)
        form.addRow("memory budget", self.budget_edit)
        form.addRow("levels", self.levels_spin)
        form.addRow("block size", self.block_spin)
        form.addRow("hidden width", self.width_spin)
        form.addRow("hidden layers", self.depth_spin)
        form.addRow("max steps / level", self.steps_spin)
        form.addRow("target PSNR", self.psnr_spin)
        form.addRow("device", self.device_combo)

        # --------------------------------------------------------------- actions
        self.fit_button = QPushButton("Fit")
        self.fit_button.clicked.connect(self._on_fit_clicked)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setEnabled(False)
        self.pause_button.clicked.connect(self._on_pause_clicked)
        buttons = QHBoxLayout()
        buttons.addWidget(self.fit_button)
        buttons.addWidget(self.pause_button)

        self.status_label = QLabel("idle")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plot = PsnrPlot()
        self.save_button = QPushButton("Save model…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._on_save_clicked)
        self.mesh_button = QPushButton("Add mesh")
        self.mesh_button.setEnabled(False)
        self.mesh_button.setToolTip(
            "add the fitted volume's surface (marching cubes at the middle of its value range) "
            "as a Surface layer"
        )
        self.mesh_button.clicked.connect(self.add_mesh)
        results = QHBoxLayout()
        results.addWidget(self.save_button)
        results.addWidget(self.mesh_button)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status_label)
        layout.addWidget(self.plot)
        layout.addLayout(results)
        layout.addStretch(1)

        # ------------------------------------------------------- viewer hookup
        for signal, slot in self._layer_list_hooks():
            signal.connect(slot)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_inputs)
        self.input_combo.currentIndexChanged.connect(self._sync_form_defaults)
        self._refresh_inputs()
        _LIVE_WIDGETS.add(self)
        app = QApplication.instance()
        if app is not None and not getattr(app, "_napari_miner_quit_hook", False):
            app.aboutToQuit.connect(_shutdown_all)
            app._napari_miner_quit_hook = True

    # ================================================================== state
    @property
    def running(self) -> bool:
        """Whether a fit is in progress (including paused and stopping)."""
        return self.worker is not None

    @property
    def paused(self) -> bool:
        """Whether the running fit is paused."""
        return self._control is not None and self._control.paused

    def selected_layer(self) -> Any:
        """The Image layer chosen as input, or None."""
        name = self.input_combo.currentData()
        if name is None or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def config(self) -> Any:
        """The :class:`~napari_miner.MinerConfig` of the form (raises ``ConfigError``).

        For a volume input: ``MinerConfig.for_volume(occupancy=<input is binary>, **form)``.
        """
        from napari_miner import MinerConfig

        values = dict(
            n_levels=self.levels_spin.value(),
            block_size=self.block_spin.value(),
            hidden_width=self.width_spin.value(),
            hidden_layers=self.depth_spin.value(),
            max_steps=self.steps_spin.value(),
            target_psnr=float(self.psnr_spin.value()),
        )
        values.update(self.config_overrides)
        source = self.path_source()
        if source is not None:
            if _is_volume_shape(source.array.shape, source.channel_axis):
                binary = source.array.dtype == bool
                return MinerConfig.for_volume(occupancy=binary, **values)
            return MinerConfig(**values)
        layer = self.selected_layer()
        if _is_volume_layer(layer):
            return MinerConfig.for_volume(occupancy=binary_range(layer) is not None, **values)
        return MinerConfig(**values)

    def path_source(self) -> Any:
        """The input opened from the path field (lazily), or None when the field is empty.

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

    def _on_path_changed(self, text: str) -> None:
        text = text.strip()
        self.store_edit.setPlaceholderText(default_store_path(text) if text else "")
        self.input_combo.setEnabled(not text and not self.running)

    def _on_browse_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Zarr image or volume to fit")
        if path:
            self.path_edit.setText(path)

    # =========================================================== input choices
    def _on_layers_inserted(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self._refresh_inputs)
        self._refresh_inputs()

    def _layer_list_hooks(self) -> list[tuple[Any, Callable[..., None]]]:
        """The layer-list events this widget follows, with their handlers."""
        events = self.viewer.layers.events
        return [
            (events.inserted, self._on_layers_inserted),
            (events.removed, self._refresh_inputs),
            (events.moved, self._refresh_inputs),
        ]

    def _refresh_inputs(self, event: Any = None) -> None:
        """Offer every Image layer (not labels, points, …) of the viewer; keep the choice."""
        from napari.layers import Image

        if self._torn_down:
            return
        current = self.input_combo.currentData()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.input_combo.blockSignals(True)
        self.input_combo.clear()
        for name in names:
            self.input_combo.addItem(name, name)
        if current in names:
            self.input_combo.setCurrentIndex(names.index(current))
        elif names:
            # prefer an input over our own outputs
            plain = [n for n in names if " · MINER" not in n]
            self.input_combo.setCurrentIndex(names.index((plain or names)[0]))
        self.input_combo.blockSignals(False)
        self._sync_form_defaults()

    def _sync_form_defaults(self, *args: Any) -> None:
        """Switch the form between the image and the volume defaults with the input's kind.

        A field still at the previous kind's default takes the new default; a value edited by
        hand stays.
        """
        from napari_miner import MinerConfig

        volume = _is_volume_layer(self.selected_layer())
        if volume == self._form_volume or self._torn_down:
            return
        old, new = MinerConfig(), MinerConfig.for_volume(occupancy=False)
        if not volume:
            old, new = new, old
        for spin, field in zip(self._volume_spins(), VOLUME_FORM_FIELDS, strict=True):
            if spin.value() == getattr(old, field):
                spin.setValue(getattr(new, field))
        self._form_volume = volume

    def _volume_spins(self) -> tuple[QSpinBox, ...]:
        return (self.block_spin, self.width_spin, self.steps_spin)

    def input_choices(self) -> list[str]:
        """Names offered by the input selector."""
        return [self.input_combo.itemText(i) for i in range(self.input_combo.count())]

    # ================================================================ fitting
    def _on_fit_clicked(self) -> None:
        if self.running:
            self.stop()
        else:
            self.start()

    def start(self) -> bool:
        """Start fitting the selected layer; returns False (after notifying) if it cannot start."""
        import torch
        from napari.qt.threading import create_worker
        from napari.utils import progress
        from napari.utils.notifications import show_error

        if self.running or self.mesh_busy:
            return False
        try:
            opened = self.path_source()
        except Exception as error:
            show_error(f"MINER: cannot fit {self.path_edit.text().strip()!r}: {error}")
            return False
        layer = self.selected_layer()
        if layer is None and opened is None:
            show_error("MINER: choose an Image layer (or a zarr path) to fit")
            return False
        try:
            config = self.config()
        except Exception as error:
            show_error(f"MINER: invalid settings: {error}")
            return False
        device = self.device_combo.currentText()
        if device == "cuda" and not _cuda_available():
            show_error("MINER: device 'cuda' requested but CUDA is not available on this machine")
            return False
        out_of_core: dict[str, Any] = {}
        if opened is not None:
            data = opened.array
            rgb = opened.channel_axis is None and not _is_volume_shape(data.shape, None)
            rgb = rgb and data.ndim == 3
            source = SourceInfo.from_source(opened.name, tuple(data.shape), rgb)
            out_of_core = dict(
                store=self.store_path(),
                memory_budget=self.budget_edit.text().strip() or None,
                channel_axis=opened.channel_axis,
            )
        else:
            data = layer.data[0] if layer.multiscale else layer.data
            source = SourceInfo.from_layer(layer)
            if source.volume and config.iou_threshold is not None:
                iso_range = binary_range(layer) or source.contrast_limits
                source = dataclasses.replace(source, iso_range=iso_range)

        if self.live is not None and self.live.source.name == source.name:
            self.live.remove()  # a new fit of the same layer replaces the previous one's layers
        self.live = LiveLayers(self.viewer, source, config.block_size, config.n_levels)
        self._source = source
        self.model = None
        self.last_status = None
        self.save_button.setEnabled(False)
        self.mesh_button.setEnabled(False)
        self.plot.clear()
        self._device_used = device
        self._control = control = FitControl()
        self._pbar_value = 0
        self._pbar = progress(total=config.n_levels * config.max_steps, desc="MINER fit")
        self.worker = create_worker(
            fit_messages,
            data,
            config,
            device,
            bool(source.rgb),
            control,
            ui_interval_s=self.ui_interval_s,
            refresh_interval_s=self.refresh_interval_s,
            torch_threads=_worker_threads(torch.get_num_threads()),
            _start_thread=False,
            **out_of_core,
        )
        self.worker.yielded.connect(self._on_message)
        self.worker.errored.connect(self._on_worker_error)
        self.worker.finished.connect(self._on_worker_finished)
        top = self.window()
        self._watch_window(top if top is not self else None)  # to stop when the viewer closes
        self._set_running_ui(True)
        self.status_label.setText(f"starting: {source.name} {tuple(data.shape)} on {device}")
        if source.volume and self.viewer.dims.ndisplay == 2:
            self.viewer.dims.ndisplay = 3  # once, at the start: the user may switch back
        self.worker.start()
        return True

    def stop(self) -> None:
        """Stop the running fit; the partial model becomes :attr:`model` (saveable)."""
        if self._control is None:
            return
        self._control.stop()
        self.fit_button.setEnabled(False)
        self.fit_button.setText("Stopping…")
        self.pause_button.setEnabled(False)

    def pause(self) -> None:
        """Pause the running fit (training waits before its next step)."""
        if self._control is not None and not self._control.stop_requested:
            self._control.pause()
            self.pause_button.setText("Resume")
            self.status_label.setText(self.status_label.text() + " · paused")

    def resume(self) -> None:
        """Resume a paused fit."""
        if self._control is not None:
            self._control.resume()
            self.pause_button.setText("Pause")

    def _on_pause_clicked(self) -> None:
        if self.paused:
            self.resume()
        else:
            self.pause()

    def _set_running_ui(self, running: bool) -> None:
        self.fit_button.setEnabled(not self.mesh_busy)
        self.fit_button.setText("Stop" if running else "Fit")
        self.pause_button.setEnabled(running)
        self.pause_button.setText("Pause")
        self.mesh_button.setEnabled(self.can_add_mesh())
        self.input_combo.setEnabled(not running and not self.path_edit.text().strip())
        for widget in (
            self.path_edit,
            self.browse_button,
            self.store_edit,
            self.budget_edit,
            self.levels_spin,
            self.block_spin,
            self.width_spin,
            self.depth_spin,
            self.steps_spin,
            self.psnr_spin,
            self.device_combo,
        ):
            widget.setEnabled(not running)

    # ======================================================== worker messages
    def _on_message(self, message: Any) -> None:
        """Queue a worker message and handle the queue in order (main thread).

        napari may process pending events while a layer is added or the progress bar redraws;
        the queue keeps a message from being handled inside the handling of the previous one.
        """
        self._inbox.append(message)
        if self._handling:
            return
        self._handling = True
        try:
            while self._inbox:
                message = self._inbox.popleft()
                try:
                    self._handle(message)
                except Exception:  # a bug here must not leave the widget stuck "running"
                    logger.exception("napari-miner: error while handling %r", message)
        finally:
            self._handling = False

    def _handle(self, message: Any) -> None:
        if message is _WORKER_FINISHED:
            self._release_worker()
            if not self._torn_down:
                self._set_running_ui(False)
            return
        if isinstance(message, _WorkerError):
            self._on_failed(message.error)
            return
        if self._torn_down or self.live is None:
            if (
                isinstance(message, LevelData)
                and message.kind == "preview"
                and self._control is not None
            ):
                self._control.frame_handled()
            return
        if isinstance(message, Status):
            self._show_status(message)
        elif isinstance(message, LevelData):
            try:
                self.live.show_level(message.level, message.data)
            finally:
                if message.kind == "preview" and self._control is not None:
                    self._control.frame_handled()
        elif isinstance(message, Done):
            self._on_done(message)
        elif isinstance(message, Failed):
            self._on_failed(message.error)

    def _show_status(self, status: Status) -> None:
        self.last_status = status
        self.plot.extend(status.history)
        if status.labels is not None:
            self.live.show_overlay(status.labels)
        where = f"step {status.step}"
        if status.tiles is not None:
            where = f"tile {status.tiles[0]}/{status.tiles[1]} · {where}"
        text = (
            f"level {status.level} of {status.n_levels} · {where} · "
            f"active {status.n_active}/{status.n_blocks} · PSNR {_db(status.psnr)}"
            f"{_iou(status.iou)} · {status.elapsed_s:.1f} s"
        )
        if self.paused:
            text += " · paused"
        self.status_label.setText(text)
        pbar = self._pbar
        if pbar is not None:
            value = status.finished_levels * status.max_steps
            if not status.level_done and status.tiles is not None:  # out of core: by tiles
                value += status.max_steps * status.tiles[0] // max(status.tiles[1], 1)
            elif not status.level_done:
                value += min(status.step, status.max_steps)
            if value > self._pbar_value:
                delta, self._pbar_value = value - self._pbar_value, value
                pbar.set_description(f"MINER level {status.level}")
                pbar.update(delta)

    def _on_done(self, done: Done) -> None:
        self.model = done.model
        live = self.live
        assert live is not None
        if done.level_data is not None:
            live.show_level(done.level_data.level, done.level_data.data)
        if done.labels is not None:
            live.show_overlay(done.labels)
        if done.pyramid or done.volume is not None:
            live.show_final(done.pyramid, done.model, done.volume)
        self.save_button.setEnabled(True)
        self.mesh_button.setEnabled(self.can_add_mesh())
        if done.stopped:
            text = f"stopped after {done.elapsed_s:.1f} s: partial model kept"
        else:
            text = (
                f"done ({done.reason}) · PSNR {_db(done.psnr)}{_iou(done.iou)} · "
                f"{done.elapsed_s:.1f} s"
            )
        self.status_label.setText(text)
        self._close_pbar()

    def _on_failed(self, error: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._close_pbar()
        self.status_label.setText(f"failed: {error}")
        show_error(f"MINER fit failed: {error}")

    def _on_worker_error(self, error: BaseException) -> None:
        # only reached if something escaped fit_messages (it yields its own errors)
        self._on_message(_WorkerError(error))

    def _on_worker_finished(self) -> None:
        # queued behind the worker's last messages, so that they are all handled first
        self._on_message(_WORKER_FINISHED)

    def _release_worker(self) -> None:
        worker, self.worker = self.worker, None
        self._control = None
        self._close_pbar()
        if worker is not None:
            for signal, slot in (
                (worker.yielded, self._on_message),
                (worker.errored, self._on_worker_error),
                (worker.finished, self._on_worker_finished),
            ):
                try:
                    signal.disconnect(slot)
                except (TypeError, RuntimeError):  # already disconnected
                    pass
        if self._device_used != "cpu":
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # pragma: no cover - freeing memory must never raise
                pass

    def _close_pbar(self) -> None:
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            pbar.close()

    # ==================================================================== mesh
    @property
    def mesh_busy(self) -> bool:
        """Whether *Add mesh* is extracting a surface."""
        return self.mesh_worker is not None

    def can_add_mesh(self) -> bool:
        """Whether *Add mesh* applies: a finished or stopped model of a single-channel volume."""
        return (
            self.model is not None
            and not self.running
            and not self.mesh_busy
            and self.live is not None
            and is_volume_layout(self.model.layout)
        )

    def add_mesh(self) -> bool:
        """Extract the fitted surface in a thread and add it as a Surface layer when done.

        Marching cubes of level 0 at :data:`MESH_THRESHOLD` (normalised units); the layer,
        ``<name> · MINER mesh``, takes the input layer's scale and translate. Returns whether the
        extraction started; its failure (e.g. no surface at the threshold) is a notification.
        """
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        if not self.can_add_mesh():
            show_error("MINER: Add mesh needs a fitted single-channel 3D volume")
            return False
        live, done = self.live, threading.Event()
        self._mesh_done = done

        def extract(model: Any) -> Any:
            from napari_miner.io.mesh import extract_mesh

            try:  # errors are returned: napari would relay a raised one as an unhandled error
                return extract_mesh(model, level=0, threshold=MESH_THRESHOLD)
            except Exception as error:
                return _WorkerError(error)
            finally:
                done.set()

        worker = create_worker(extract, self.model, _start_thread=False)
        self.mesh_worker = worker
        worker.returned.connect(lambda mesh: self._on_mesh(live, mesh))
        worker.errored.connect(self._on_mesh_error)
        worker.finished.connect(self._on_mesh_finished)
        self._previous_status = self.status_label.text()
        self.status_label.setText("extracting the mesh (marching cubes)…")
        self.mesh_button.setEnabled(False)
        self.fit_button.setEnabled(False)
        QApplication.setOverrideCursor(Qt.CursorShape.BusyCursor)
        worker.start()
        return True

    def _on_mesh(self, live: LiveLayers, mesh: Any) -> None:
        if self._torn_down:
            return
        if isinstance(mesh, _WorkerError):
            self._on_mesh_error(mesh.error)
            return
        layer = live.show_mesh(mesh.vertices, mesh.faces)
        self.status_label.setText(
            f"{self._previous_status} · mesh: {len(mesh.faces)} faces in '{layer.name}'"
        )

    def _on_mesh_error(self, error: BaseException) -> None:
        from napari.utils.notifications import show_error

        if self._torn_down:
            return
        self.status_label.setText(f"{self._previous_status} · no mesh")
        show_error(f"MINER: could not extract a mesh: {error}")

    def _on_mesh_finished(self) -> None:
        if self.mesh_worker is None:
            return
        self.mesh_worker = None
        QApplication.restoreOverrideCursor()
        if not self._torn_down:
            self._set_running_ui(self.running)

    # ==================================================================== save
    def default_save_name(self) -> str:
        """``<layer>.miner.zarr`` for the last fitted layer."""
        name = self._source.name if self._source is not None else "model"
        return f"{name}{MODEL_SUFFIX}"

    def ask_save_path(self, default: str) -> str:
        """Ask where to save (a file dialog); "" when cancelled."""
        path, _ = QFileDialog.getSaveFileName(
            self, "Save MINER model", default, f"MINER model (*{MODEL_SUFFIX})"
        )
        return path

    def _on_save_clicked(self) -> None:
        path = self.ask_save_path(os.path.join(os.getcwd(), self.default_save_name()))
        if path:
            self.save(path)

    def save(self, path: str) -> str | None:
        """Save :attr:`model` to ``path`` (``.miner.zarr`` appended if missing); the path or None."""
        from napari.utils.notifications import show_error, show_info

        if self.model is None:
            show_error("MINER: no model to save yet")
            return None
        if not path.lower().rstrip("/\\").endswith(MODEL_SUFFIX):
            path = path + MODEL_SUFFIX
        try:
            self.model.save(path)
        except Exception as error:
            show_error(f"MINER: could not save the model to {path}: {error}")
            return None
        show_info(f"MINER model saved to {path}")
        return path

    # ============================================================== lifecycle
    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the fit and wait for the worker thread to finish (the viewer or widget closes)."""
        control, worker = self._control, self.worker
        if control is None or worker is None:
            return
        control.stop(closing=True)
        deadline = time.monotonic() + timeout_s
        if not control.done.wait(max(0.0, deadline - time.monotonic())):
            logger.warning("napari-miner: the fit did not stop within %.0f s", timeout_s)
        while worker.is_running and time.monotonic() < deadline:
            time.sleep(0.005)  # run() is emitting its last signals
        self._release_worker()

    def _teardown(self) -> None:
        """Shut the fit down and disconnect from the viewer (widget or viewer closing)."""
        if self._torn_down:
            return
        self.shutdown()
        self._torn_down = True
        if self.mesh_worker is not None:  # let a running extraction end (its result is dropped)
            self._mesh_done.wait(30.0)
            self._on_mesh_finished()
        _LIVE_WIDGETS.discard(self)
        self._watch_window(None)
        try:
            for signal, slot in self._layer_list_hooks():
                signal.disconnect(slot)
            for layer in self.viewer.layers:
                layer.events.name.disconnect(self._refresh_inputs)
        except Exception:  # the viewer may already be half torn down
            pass

    def _watch_window(self, window: QObject | None) -> None:
        if self._window is not None:
            try:
                self._window.removeEventFilter(self)
            except RuntimeError:  # already deleted
                pass
        self._window = window
        if window is not None:
            window.installEventFilter(self)

    def event(self, event: QEvent) -> bool:  # noqa: D102 - Qt override
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            # napari takes a closed dock widget's content out with setParent(None)
            self.shutdown()
        return super().event(event)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: D102, N802 - Qt override
        if obj is self._window and event.type() == QEvent.Type.Close:
            self._teardown()
        return False

    def closeEvent(self, event: Any) -> None:  # noqa: D102 - Qt override
        self._teardown()
        super().closeEvent(event)


def _worker_threads(main_threads: int) -> int:
    """Threads for torch in the training thread: as many as the main thread, one core left to the GUI.

    (OpenMP thread counts are per thread in torch, so the worker sets its own; with every core busy
    training, the GUI's rendering competes with OpenMP's spinning threads and both slow down.)
    """
    return max(1, min(main_threads, (os.cpu_count() or 2) - 1))


def default_store_path(input_path: str) -> str:
    """``<input name>.miner.zarr`` next to the input (its ``.zarr``/``.ome.zarr`` suffix dropped)."""
    path = os.path.abspath(os.path.expanduser(input_path.rstrip("/\\")))
    name = os.path.basename(path)
    for suffix in (".ome.zarr", ".zarr"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return os.path.join(os.path.dirname(path), f"{name or 'fit'}.miner.zarr")


def _is_volume_shape(shape: tuple[int, ...], channel_axis: int | None) -> bool:
    """Whether an input of ``shape`` is a volume (3 spatial axes) rather than a 2D/RGB image."""
    if channel_axis is not None:
        return len(shape) == 4
    return len(shape) == 3 and shape[-1] not in (3, 4)


def _is_volume_layer(layer: Any) -> bool:
    """Whether ``layer`` is a 3D, non-RGB image (fitted as a volume)."""
    return layer is not None and layer.ndim == 3 and not layer.rgb


def binary_range(layer: Any) -> tuple[float, float] | None:
    """``(low, high)`` of a binary (occupancy) image layer, or ``None`` if it is not binary.

    Binary: a bool dtype, or at most two distinct values (a single value counts if it is 0 or 1).
    Large inputs are judged on a subsample: a strided one of an in-memory array, the central box
    of a lazy (dask, zarr) one.
    """
    import numpy as np

    data = layer.data[0] if layer.multiscale else layer.data
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


def _spin(lo: int, hi: int, value: int, tip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(lo, hi)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _iou(value: float | None) -> str:
    """`` · IoU 0.987`` (empty without a value)."""
    if value is None or not math.isfinite(value):
        return ""
    return f" · IoU {value:.3f}"


def _db(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "– dB"
    return f"{value:.2f} dB"
