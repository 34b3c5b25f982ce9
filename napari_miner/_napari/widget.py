"""The "MINER fit" dock widget: fit an Image layer (or a zarr path) with MINER and watch it train.

A thin shell over the public API and its progress model:

* :class:`~._inputs.InputPanel` — what to fit (an Image layer, or a zarr path fitted out of core
  into a model store under a memory budget) and the device;
* :class:`~._settings.SettingsForm` — the :class:`~napari_miner.MinerConfig` form (magicgui), which
  switches between the image and volume defaults with the kind of input;
* :class:`~._fit_worker.FitWorker` — the fit in a thread worker; its messages carry snapshots of
  the run's :class:`~napari_miner.fitting.progress.FitProgress`: the status line is its
  ``describe()``, napari's progress bar its ``fraction``, the PSNR plot its ``history``;
* :class:`~._live_layers.LiveLayers` — the layers of the fit (main thread only);
* :class:`~._debug_panel.DebugPanel` and :class:`~._debug_layers.DebugLayers` — the debugging
  views: per-level PSNR, the error map and block-state layers, the block under the cursor;
* :class:`~._results.ResultActions` — *Save model…* and *Add mesh* (volumes).

A volume turns the viewer to 3D when its fit starts.
Closing the widget (its dock) or the viewer stops the fit and waits for its thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_miner.core.config import MinerConfig
from napari_miner.core.errors import ConfigError
from napari_miner.fitting.progress import FitProgress

from ._debug_layers import DebugLayers
from ._debug_panel import DebugPanel
from ._fit_worker import FitWorker
from ._inputs import InputPanel, cuda_available
from ._live_layers import LiveLayers
from ._plot import PsnrPlot
from ._results import ResultActions
from ._settings import SettingsForm
from ._worker import BlockView, Done, Failed, FitRequest, LevelData, Message, Status
from .progressive_layer import progressive_pyramid, supports_progressive

if TYPE_CHECKING:
    import napari

__all__ = ["MinerWidget"]

PBAR_STEPS = 1000
"""napari's progress bar counts the fit's ``fraction`` in this many steps."""


class MinerWidget(QWidget):
    """Dock widget that fits the selected Image layer (or a zarr path) with MINER.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (napari passes its public-only proxy).

    Attributes
    ----------
    inputs : InputPanel
        Input layer or zarr path, model store, memory budget, device.
    settings : SettingsForm
        The training settings.
    fit : FitWorker or None
        The running fit.
    progress : FitProgress or None
        The progress last shown.
    live : LiveLayers or None
        The layers of the current (or last) fit.
    debug : DebugLayers or None
        Its debugging layers (error map, block states).
    debug_panel : DebugPanel
        Per-level PSNR, legends, the block under the cursor.
    results : ResultActions
        *Save model…* and *Add mesh*.
    ui_interval_s, refresh_interval_s : float
        Throttling: at most one progress update per ``ui_interval_s``, one live-layer refresh
        per ``refresh_interval_s``.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("MinerWidget")
        self.viewer = viewer
        self.fit: FitWorker | None = None
        self.progress: FitProgress | None = None
        self.live: LiveLayers | None = None
        self.debug: DebugLayers | None = None
        self._lazy = False
        self.ui_interval_s, self.refresh_interval_s = 0.2, 1.0
        self._config = MinerConfig()
        self._pbar: Any = None
        self._pbar_value = 0
        self._window: QObject | None = None
        self._torn_down = False

        self.inputs = InputPanel(viewer)
        self.settings = SettingsForm(self.inputs.input_defaults())
        self.inputs.changed.connect(self._sync_defaults)
        self.fit_button = _button("Fit", self._on_fit_clicked)
        self.pause_button = _button("Pause", self._on_pause_clicked, enabled=False)
        self.status_label = QLabel("idle")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plot = PsnrPlot()
        self.debug_panel = DebugPanel(self._set_debug_visible)
        viewer.cursor.events.position.connect(self._on_cursor)
        self.results = ResultActions(self.status_label)
        self.results.busy_changed.connect(lambda: self._set_running_ui(self.running))
        layout = QVBoxLayout(self)
        layout.addWidget(self.inputs)
        layout.addWidget(self.settings)
        layout.addLayout(_row(self.fit_button, self.pause_button))
        layout.addWidget(self.status_label)
        layout.addWidget(self.plot)
        layout.addWidget(self.debug_panel)
        layout.addWidget(self.results)
        layout.addStretch(1)

    # ================================================================== state
    @property
    def running(self) -> bool:
        """Whether a fit is in progress (including paused and stopping)."""
        return self.fit is not None

    @property
    def paused(self) -> bool:
        """Whether the running fit is paused."""
        return self.fit is not None and self.fit.paused

    @property
    def model(self) -> Any:
        """The last fitted (or stopped) model (a :class:`~napari_miner.MinerModel`), or None."""
        return self.results.model

    def config(self) -> MinerConfig:
        """The :class:`~napari_miner.MinerConfig` of the form (raises ``ConfigError``)."""
        return self.settings.config()

    def _sync_defaults(self) -> None:
        defaults = self.inputs.input_defaults()
        if defaults is not None and not self._torn_down:
            self.settings.use_defaults(defaults)

    # ================================================================ fitting
    def _on_fit_clicked(self) -> None:
        if self.running:
            self.stop()
        else:
            self.start()

    def start(self) -> bool:
        """Start fitting the chosen input; returns False (after notifying) if it cannot start."""
        from napari.utils import progress
        from napari.utils.notifications import show_error

        if self.running or self.results.mesh_busy:
            return False
        device = self.inputs.device()
        self._sync_defaults()  # (a path typed but not entered yet)
        try:
            config = self.config()
            if device == "cuda" and not cuda_available():
                raise ConfigError("device 'cuda' requested but CUDA is not available here")
            data, source, options = self.inputs.fit_input(config.iou_threshold is not None)
        except Exception as error:
            show_error(f"MINER: cannot fit: {error}")
            return False
        if self.live is not None and self.live.source.name == source.name:
            self.live.remove()  # a new fit of the same input replaces the previous one's layers
        self.live = LiveLayers(self.viewer, source, config.block_size, config.n_levels)
        self.debug, self._lazy = DebugLayers(self.live), options.get("store") is not None
        self.debug.visible.update(
            error=self.debug_panel.error_check.isChecked(),
            states=self.debug_panel.states_check.isChecked(),
        )
        self.debug_panel.clear(config.n_levels)
        self.results.model, self.results.live = None, self.live
        self._config, self.progress = config, None
        self.plot.clear()
        self._pbar, self._pbar_value = progress(total=PBAR_STEPS, desc="MINER fit"), 0
        request = FitRequest(data, config, device, **options)
        self.fit = FitWorker(
            request, self._on_message, self._on_fit_finished, self.ui_interval_s,
            self.refresh_interval_s,
        )  # fmt: skip
        top = self.window()
        self._watch_window(top if top is not self else None)  # to stop when the viewer closes
        self._set_running_ui(True)
        self.status_label.setText(f"starting: {source.name} {tuple(data.shape)} on {device}")
        if source.volume and self.viewer.dims.ndisplay == 2:
            self.viewer.dims.ndisplay = 3  # once, at the start: the user may switch back
        self.fit.start()
        return True

    def stop(self) -> None:
        """Stop the running fit; the partial model becomes :attr:`model` (saveable)."""
        if self.fit is None:
            return
        self.fit.stop()
        self.fit_button.setEnabled(False)
        self.fit_button.setText("Stopping…")
        self.pause_button.setEnabled(False)

    def pause(self) -> None:
        """Pause the running fit (training waits before its next step)."""
        if self.fit is not None and not self.fit.control.stop_requested:
            self.fit.pause()
            self.pause_button.setText("Resume")
            self.status_label.setText(self.status_label.text() + " · paused")

    def resume(self) -> None:
        """Resume a paused fit."""
        if self.fit is not None:
            self.fit.resume()
            self.pause_button.setText("Pause")

    def _on_pause_clicked(self) -> None:
        if self.paused:
            self.resume()
        else:
            self.pause()

    def _set_running_ui(self, running: bool) -> None:
        self.fit_button.setEnabled(not self.results.mesh_busy)
        self.fit_button.setText("Stop" if running else "Fit")
        self.pause_button.setEnabled(running)
        self.pause_button.setText("Pause")
        self.results.set_fitting(running)
        self.inputs.set_running(running)
        self.settings.setEnabled(not running)

    # ======================================================== worker messages
    def _on_message(self, message: Message) -> None:
        if self._torn_down or self.live is None:
            return
        if isinstance(message, Status):
            self._show_status(message)
        elif isinstance(message, LevelData):
            self.live.show_level(message.level, message.data)
            self._show_debug(frame=message)
        elif isinstance(message, Done):
            self._on_done(message)
        elif isinstance(message, Failed):
            self._on_failed(message.error)

    def _show_status(self, status: Status) -> None:
        self.progress = progress = status.progress
        self.plot.extend(status.history)
        if status.labels is not None:
            self.live.show_overlay(status.labels)
        self._show_debug(status.blocks)
        paused = " · paused" if self.paused else ""
        self.status_label.setText(progress.describe() + paused)
        self._advance_pbar(progress)

    def _show_debug(self, blocks: BlockView | None = None, frame: LevelData | None = None) -> None:
        debug = self.debug
        if frame is not None and frame.error is not None:
            debug.show_pixel_error(frame.level, frame.error)
        if blocks is not None:
            debug.show_blocks(blocks)
            self._on_cursor()  # the block under the cursor, as it is now
        debug.raise_shown()  # (above level layers added since)
        if self.progress is not None:
            self.debug_panel.show_levels(self.progress.level_rows())
        self.debug_panel.show_error_mode(debug.error_mode, debug.error_level, self._lazy)

    def _set_debug_visible(self, which: str, visible: bool) -> None:
        if self.debug is not None:
            self.debug.set_visible(which, visible)

    def _on_cursor(self, event: Any = None) -> None:
        if self.debug is not None and not self._torn_down:
            self.debug_panel.show_info(self.debug.block_info(self.viewer.cursor.position))

    def _advance_pbar(self, progress: FitProgress) -> None:
        value = int(progress.fraction * PBAR_STEPS)
        if self._pbar is not None and value > self._pbar_value:
            self._pbar.set_description(f"MINER level {progress.level}")
            self._pbar.update(value - self._pbar_value)
            self._pbar_value = value

    def _on_done(self, done: Done) -> None:
        self.results.model, self.progress = done.model, done.progress
        live = self.live
        if done.level_data is not None:
            live.show_level(done.level_data.level, done.level_data.data)
        live.show_overlay(done.labels)
        pyramid, refresher = done.pyramid, None
        if pyramid is not None and supports_progressive(done.model):
            # tiles decoded off the main thread, so that browsing the result never freezes
            progressive, refresher = progressive_pyramid(done.model)
            pyramid = progressive.levels
        final = live.show_final(pyramid, done.volume)
        if refresher is not None and final is not None:
            refresher.add_layer(final)
        self._show_debug(done.blocks, done.level_data)
        if done.stopped:
            text = f"stopped after {done.progress.elapsed_s:.1f} s: partial model kept"
        else:
            text = done.progress.describe()
            self._advance_pbar(done.progress)
        self.status_label.setText(text)
        self._close_pbar()

    def _on_failed(self, error: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._close_pbar()
        self.status_label.setText(f"failed: {error}")
        show_error(f"MINER fit failed: {error}")

    def _on_fit_finished(self) -> None:
        self.fit = None
        self._close_pbar()
        if not self._torn_down:
            self._set_running_ui(False)

    def _close_pbar(self) -> None:
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            pbar.close()

    # ============================================================== lifecycle
    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the fit and wait for its thread to finish (the viewer or the widget closes)."""
        if self.fit is not None:
            self.fit.shutdown(timeout_s)

    def _teardown(self) -> None:
        """Shut the fit down and disconnect from the viewer (widget or viewer closing)."""
        if self._torn_down:
            return
        self.shutdown()
        self._torn_down = True
        self.viewer.cursor.events.position.disconnect(self._on_cursor)
        self.results.close_actions()
        self._watch_window(None)
        self.inputs.disconnect_viewer()

    def _watch_window(self, window: QObject | None) -> None:
        if self._window is not None:
            try:
                self._window.removeEventFilter(self)
            except RuntimeError:  # already deleted
                pass
        self._window = window
        if window is not None:
            window.installEventFilter(self)

    def showEvent(self, event: Any) -> None:  # noqa: D102, N802 - Qt override
        # one label column for the input rows and the settings (their fonts are final now)
        labels = [*self.inputs.labels, *self.settings.labels]
        width = max(label.sizeHint().width() for label in labels)
        for label in labels:
            label.setMinimumWidth(width)
        super().showEvent(event)

    def event(self, event: QEvent) -> bool:  # noqa: D102 - Qt override
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.shutdown()  # napari takes a closed dock widget's content out with setParent(None)
        return super().event(event)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: D102, N802 - Qt override
        if obj is self._window and event.type() == QEvent.Type.Close:
            self._teardown()
        return False

    def closeEvent(self, event: Any) -> None:  # noqa: D102, N802 - Qt override
        self._teardown()
        super().closeEvent(event)


def _button(text: str, slot: Any, enabled: bool = True) -> QPushButton:
    button = QPushButton(text)
    button.setEnabled(enabled)
    button.clicked.connect(slot)
    return button


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
