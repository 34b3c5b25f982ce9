"""The "Debugging" panel of the MINER dock widget: per-level PSNR, legends and the block under the cursor.

A thin Qt shell: what it shows comes from the progress model
(:meth:`~napari_miner.fitting.progress.FitProgress.level_rows`), the block reports
(:meth:`~napari_miner.core.block_state.BlockReport.describe`) and
:class:`~._debug_layers.DebugLayers`; it holds

* a table of the levels (coarsest first): PSNR and state (waiting, training, done);
* *error map* and *block states* check boxes that show or hide the two debugging layers;
* the error map's colour bar with its fixed range, and what the map shows (per pixel or per block);
* the legend of the block states (a swatch and a name each, the meaning as tooltip);
* the block under the cursor: level, block, state, parameters and loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QLinearGradient, QPainter
from qtpy.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_miner.core.block_state import STATE_DESCRIPTIONS
from napari_miner.core.error_map import ERROR_RANGE_PERCENT

from ._debug_layers import ERROR_COLORMAP, STATE_COLORS
from ._plot import level_color

__all__ = ["ColorBar", "DebugPanel"]

HOVER_HINT = "hover over the image: the block under the cursor"


class ColorBar(QWidget):
    """A horizontal colour bar of a napari colormap, labelled with its fixed range."""

    def __init__(self, colormap: str, low: str, high: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari.utils.colormaps import ensure_colormap

        self.colors = [QColor.fromRgbF(*map(float, c)) for c in ensure_colormap(colormap).colors]
        self.low, self.high = low, high
        self.setMinimumHeight(2 * self.fontMetrics().height() + 6)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def paintEvent(self, event: Any) -> None:  # noqa: D102, N802 - Qt override
        painter = QPainter(self)
        font_h = self.fontMetrics().height()
        bar = QRectF(1, 1, self.width() - 2, font_h)
        gradient = QLinearGradient(bar.left(), 0, bar.right(), 0)
        n = len(self.colors)
        for k, color in enumerate(self.colors):
            gradient.setColorAt(k / max(n - 1, 1), color)
        painter.fillRect(bar, gradient)
        painter.setPen(self.palette().color(self.foregroundRole()))
        painter.drawRect(bar)
        text = QRectF(1, bar.bottom() + 2, self.width() - 2, font_h + 2)
        painter.drawText(text, int(Qt.AlignmentFlag.AlignLeft), self.low)
        painter.drawText(text, int(Qt.AlignmentFlag.AlignRight), self.high)
        painter.end()


def _swatch(color: str) -> QLabel:
    swatch = QLabel()
    swatch.setFixedSize(12, 12)
    swatch.setStyleSheet(f"background-color: {color}; border: 1px solid #202020;")
    return swatch


class DebugPanel(QGroupBox):
    """The widget's debugging panel (see the module docstring).

    Parameters
    ----------
    on_visible : callable
        Called with ``("error" | "states", bool)`` when a check box changes.

    Attributes
    ----------
    level_labels : dict of int to tuple of QLabel
        Per level, its name, PSNR and state labels.
    error_label : QLabel
        What the error map shows.
    info_label : QLabel
        The block under the cursor.
    legend : dict of BlockState to QLabel
        The state names of the legend.
    """

    def __init__(self, on_visible: Callable[[str, bool], None], parent: QWidget | None = None):
        super().__init__("Debugging", parent)
        self.setObjectName("MinerDebugPanel")
        self.level_labels: dict[int, tuple[QLabel, QLabel, QLabel]] = {}
        self._levels = QGridLayout()
        self._levels.setHorizontalSpacing(10)
        self._levels.setVerticalSpacing(2)
        self.error_check = QCheckBox("error map")
        self.states_check = QCheckBox("block states")
        for check, which in ((self.error_check, "error"), (self.states_check, "states")):
            check.toggled.connect(lambda on, which=which: on_visible(which, on))
        self.error_check.setToolTip("show the error layer (fixed range, comparable over time)")
        self.states_check.setToolTip("show the block-state layer (legend below)")
        self.colorbar = ColorBar(
            ERROR_COLORMAP, "0 %", f"{ERROR_RANGE_PERCENT:g} % of value range (RMS over channels)"
        )
        self.error_label = QLabel("error map: –")
        self.error_label.setWordWrap(True)
        self.legend: dict[Any, QLabel] = {}
        legend = QGridLayout()
        legend.setHorizontalSpacing(4)
        for k, (state, color) in enumerate(STATE_COLORS.items()):
            name = QLabel(state.label)
            name.setToolTip(STATE_DESCRIPTIONS[state])
            self.legend[state] = name
            legend.addWidget(_swatch(color), k // 3, 2 * (k % 3))
            legend.addWidget(name, k // 3, 2 * (k % 3) + 1)
        self.info_label = QLabel(HOVER_HINT)
        self.info_label.setWordWrap(True)
        self.info_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        checks = QHBoxLayout()
        checks.addWidget(QLabel("show:"))
        checks.addWidget(self.error_check)
        checks.addWidget(self.states_check)
        checks.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(self._levels)
        layout.addLayout(checks)
        layout.addWidget(self.colorbar)
        layout.addWidget(self.error_label)
        layout.addLayout(legend)
        layout.addWidget(self.info_label)

    def clear(self, n_levels: int) -> None:
        """A new fit of ``n_levels`` levels: empty table, no error map, no block."""
        while self._levels.count():
            item = self._levels.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.level_labels = {}
        for row, j in enumerate(reversed(range(n_levels))):
            name = QLabel(f"L{j}")
            name.setStyleSheet(f"color: {level_color(j).name()}; font-weight: bold;")
            labels = (name, QLabel("– dB"), QLabel("waiting"))
            for column, label in enumerate(labels):
                self._levels.addWidget(label, row, column)
            self.level_labels[j] = labels
        self._levels.setColumnStretch(2, 1)
        self.error_label.setText("error map: –")
        self.info_label.setText(HOVER_HINT)

    def show_levels(self, rows: list[tuple[int, str, str]]) -> None:
        """Show :meth:`~napari_miner.fitting.progress.FitProgress.level_rows`."""
        for level, psnr, state in rows:
            labels = self.level_labels.get(level)
            if labels is not None:
                labels[1].setText(psnr)
                labels[2].setText(state)

    def level_texts(self) -> dict[int, tuple[str, str]]:
        """Per level, the PSNR and state shown."""
        return {j: (p.text(), s.text()) for j, (_, p, s) in self.level_labels.items()}

    def show_error_mode(self, mode: str | None, level: int | None, lazy: bool) -> None:
        """Say what the error map shows: per pixel or per block (and why), and of which level."""
        if mode is None:
            text = "error map: –"
        elif mode == "pixel":
            text = f"error map of level {level}: per pixel"
        else:
            why = "an out-of-core fit's input is not in memory" if lazy else "needs a NumPy input"
            text = f"error map of level {level}: RMSE per block (no per-pixel map: {why})"
        self.error_label.setText(text)

    def show_info(self, text: str | None) -> None:
        """Describe the block under the cursor (``None``: none there)."""
        self.info_label.setText(text or HOVER_HINT)
