"""What the MINER dock widget does with a fitted model: *Save model…* and *Add mesh*."""

from __future__ import annotations

import os
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QApplication, QFileDialog, QHBoxLayout, QLabel, QPushButton, QWidget

from napari_miner.io.schema import SUFFIX

from ._fit_worker import MeshWorker
from ._live_layers import LiveLayers

__all__ = ["MESH_THRESHOLD", "ResultActions"]

MESH_THRESHOLD = 0.5
"""Iso level of *Add mesh*, in normalised units: the middle of the input's value range."""


class ResultActions(QWidget):
    """The *Save model…* and *Add mesh* buttons and what they do.

    Parameters
    ----------
    status_label : QLabel
        The widget's status line (*Add mesh* reports there).
    parent : QWidget, optional
        Qt parent.

    Attributes
    ----------
    model : MinerModel or None
        The last fitted (or stopped) model.
    live : LiveLayers or None
        The layers of that fit (the mesh joins them).
    mesh_worker : MeshWorker or None
        The running *Add mesh* extraction.

    Signals
    -------
    busy_changed
        An extraction started or ended.
    """

    busy_changed = Signal()

    def __init__(self, status_label: QLabel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.status_label = status_label
        self.model: Any = None
        self.live: LiveLayers | None = None
        self.mesh_worker: MeshWorker | None = None
        self._fitting = False
        self._closed = False
        self._previous_status = ""
        self.save_button = QPushButton("Save model…")
        self.save_button.clicked.connect(self._on_save_clicked)
        self.mesh_button = QPushButton("Add mesh")
        self.mesh_button.setToolTip(
            "add the fitted volume's surface (marching cubes at the middle of its value range) "
            "as a Surface layer"
        )
        self.mesh_button.clicked.connect(self.add_mesh)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.save_button)
        row.addWidget(self.mesh_button)
        self.set_fitting(False)

    def set_fitting(self, fitting: bool) -> None:
        """Enable the actions that apply (none while a fit runs)."""
        self._fitting = fitting
        self.save_button.setEnabled(not fitting and self.model is not None)
        self.mesh_button.setEnabled(self.can_add_mesh())

    # ------------------------------------------------------------------ mesh
    @property
    def mesh_busy(self) -> bool:
        """Whether *Add mesh* is extracting a surface."""
        return self.mesh_worker is not None

    def can_add_mesh(self) -> bool:
        """Whether *Add mesh* applies: a finished or stopped model of a single-channel volume."""
        layout = None if self.model is None else self.model.layout
        return (
            layout is not None
            and layout.is_volume
            and layout.n_channels == 1
            and self.live is not None
            and not self._fitting
            and not self.mesh_busy
        )

    def add_mesh(self) -> bool:
        """Extract the fitted surface in a thread; add it as ``<name> · MINER mesh`` when done.

        Marching cubes of level 0 at :data:`MESH_THRESHOLD` (normalised units), in the input's
        world coordinates. Returns whether the extraction started; a failure is a notification.
        """
        from napari.utils.notifications import show_error

        if not self.can_add_mesh():
            show_error("MINER: Add mesh needs a fitted single-channel 3D volume")
            return False
        live = self.live
        self.mesh_worker = MeshWorker(
            self.model, MESH_THRESHOLD, lambda mesh: self._on_mesh(live, mesh),
            self._on_mesh_error, self._on_mesh_finished,
        )  # fmt: skip
        self._previous_status = self.status_label.text()
        self.status_label.setText("extracting the mesh (marching cubes)…")
        self.mesh_button.setEnabled(False)
        QApplication.setOverrideCursor(Qt.CursorShape.BusyCursor)
        self.busy_changed.emit()
        self.mesh_worker.start()
        return True

    def _on_mesh(self, live: LiveLayers, mesh: Any) -> None:
        if self._closed:
            return
        layer = live.show_mesh(mesh.vertices, mesh.faces)
        self.status_label.setText(
            f"{self._previous_status} · mesh: {len(mesh.faces)} faces in '{layer.name}'"
        )

    def _on_mesh_error(self, error: BaseException) -> None:
        from napari.utils.notifications import show_error

        if self._closed:
            return
        self.status_label.setText(f"{self._previous_status} · no mesh")
        show_error(f"MINER: could not extract a mesh: {error}")

    def _on_mesh_finished(self) -> None:
        if self.mesh_worker is None:
            return
        self.mesh_worker = None
        QApplication.restoreOverrideCursor()
        if not self._closed:
            self.set_fitting(self._fitting)
            self.busy_changed.emit()

    def close_actions(self) -> None:
        """The widget closes: let a running extraction end, and drop its result."""
        self._closed = True
        if self.mesh_worker is not None:
            self.mesh_worker.wait(30.0)
            self._on_mesh_finished()

    # ------------------------------------------------------------------ save
    def default_save_name(self) -> str:
        """``<input>.miner.zarr`` for the last fitted input."""
        name = self.live.source.name if self.live is not None else "model"
        return f"{name}{SUFFIX}"

    def ask_save_path(self, default: str) -> str:
        """Ask where to save (a file dialog); "" when cancelled."""
        path, _ = QFileDialog.getSaveFileName(
            self, "Save MINER model", default, f"MINER model (*{SUFFIX})"
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
        if not path.lower().rstrip("/\\").endswith(SUFFIX):
            path = path + SUFFIX
        try:
            self.model.save(path)
        except Exception as error:
            show_error(f"MINER: could not save the model to {path}: {error}")
            return None
        show_info(f"MINER model saved to {path}")
        return path
