"""A tiny PSNR-over-time plot for the MINER dock widget (a QWidget painting polylines)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["PsnrPlot", "level_color"]

_PALETTE = ("#ff6e6e", "#ffb74d", "#fff176", "#81c784", "#4dd0e1", "#64b5f6", "#ba68c8")


def level_color(level: int) -> QColor:
    """Colour of a pyramid level's curve (level 0, full resolution, first)."""
    return QColor(_PALETTE[level % len(_PALETTE)])


class PsnrPlot(QWidget):
    """PSNR (dB) against training time (s), one coloured polyline per pyramid level.

    The plotted points are public: :attr:`points` is the list of ``(elapsed_s, psnr_db, level)``.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: list[tuple[float, float, int]] = []
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("PSNR of the level being trained (dB) over training time (s)")

    # ------------------------------------------------------------------------ data
    def clear(self) -> None:
        """Forget every point."""
        self.points = []
        self.update()

    def extend(self, points: list[tuple[float, float, int]]) -> None:
        """Append ``(elapsed_s, psnr_db, level)`` points (non-finite PSNRs are skipped)."""
        self.points.extend((float(t), float(p), int(j)) for t, p, j in points if math.isfinite(p))
        if points:
            self.update()

    @property
    def xs(self) -> list[float]:
        """Elapsed training times of the points (s)."""
        return [p[0] for p in self.points]

    @property
    def ys(self) -> list[float]:
        """PSNRs of the points (dB)."""
        return [p[1] for p in self.points]

    def ranges(self) -> tuple[float, float, float, float]:
        """Axis ranges ``(t0, t1, psnr0, psnr1)``: time from 0, PSNR rounded out to whole dB."""
        t_max = max([1e-3, *self.xs])
        ys = self.ys or [0.0, 40.0]
        y0, y1 = min(ys), max(ys)
        if y1 - y0 < 1.0:
            y0, y1 = y0 - 0.5, y1 + 0.5
        return 0.0, t_max, math.floor(y0), math.ceil(y1)

    # -------------------------------------------------------------------- painting
    def paintEvent(self, event) -> None:  # noqa: D102 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().color(self.foregroundRole())
        font_h = self.fontMetrics().height()
        margin_l = self.fontMetrics().horizontalAdvance("00 dB") + 6
        frame = QRectF(margin_l, 4, self.width() - margin_l - 6, self.height() - font_h - 10)
        painter.setPen(QPen(text, 1))
        painter.drawRect(frame)
        x0, x1, y0, y1 = self.ranges()
        painter.drawText(QPointF(2, frame.top() + font_h * 0.8), f"{y1:.0f} dB")
        painter.drawText(QPointF(2, frame.bottom()), f"{y0:.0f} dB")
        label = f"{x1:.1f} s" if self.points else "PSNR over time"
        painter.drawText(
            QRectF(frame.left(), frame.bottom() + 2, frame.width(), font_h + 4),
            int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop),
            label,
        )

        def to_screen(t: float, p: float) -> QPointF:
            x = frame.left() + (t - x0) / (x1 - x0) * frame.width()
            y = frame.bottom() - (p - y0) / (y1 - y0) * frame.height()
            return QPointF(x, y)

        runs: list[tuple[int, list[QPointF]]] = []
        for t, p, j in self.points:
            if not runs or runs[-1][0] != j:
                runs.append((j, []))
            runs[-1][1].append(to_screen(t, p))
        for j, pts in runs:
            painter.setPen(QPen(level_color(j), 2))
            if len(pts) == 1:
                painter.drawEllipse(pts[0], 1.5, 1.5)
            else:
                painter.drawPolyline(QPolygonF(pts))
        # legend: the levels seen, in the colours of the curves and of the overlay's labels
        x = frame.left() + 4
        for j in sorted({p[2] for p in self.points}, reverse=True):
            painter.setPen(QPen(level_color(j), 1))
            tag = f"L{j}"
            painter.drawText(QPointF(x, frame.bottom() - 4), tag)
            x += self.fontMetrics().horizontalAdvance(tag + " ")
        painter.end()
