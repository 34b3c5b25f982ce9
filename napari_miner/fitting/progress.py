"""The progress model: a fit's events in, the state every front end shows out (no Qt).

The command line (progress bars), the demo (printed lines) and the napari widget (status line,
progress bar, PSNR plot, active-block overlay) all read a :class:`FitProgress` that they feed with
the fit's events; none of them interprets raw events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..core.block_state import BlockReport
from ..core.blocks import BlockGrid
from ..core.config import MinerConfig
from ..core.events import (
    MISSED_TARGET_HINTS,
    Event,
    Finished,
    Progress,
    ScaleFinished,
    ScaleStarted,
    TileFinished,
)
from ..core.layout import InputLayout
from ..core.overlay import block_labels
from ..core.pyramid import level_shapes

__all__ = ["FitProgress", "format_db"]


def format_db(value: float | None) -> str:
    """``"38.21 dB"``, or ``"– dB"`` without a finite value."""
    if value is None or not math.isfinite(value):
        return "– dB"
    return f"{value:.2f} dB"


@dataclass
class FitProgress:
    """How far a fit is, updated by :meth:`update` with each event.

    Attributes
    ----------
    n_levels, max_steps : int
        From the fit's config.
    grid0 : tuple of int
        Level 0's block grid (the shape of :meth:`labels`).
    level : int
        The level being trained (or the last one that finished).
    step : int
        Steps of the running level (of the running tile, in a tiled level).
    n_active, n_blocks : int
        Blocks still training and blocks of the level (after a level: blocks with an MLP).
    tiles_done, n_tiles : int
        Finished and total training tiles of the level.
    psnr : float
        PSNR of the level's estimate (the running tile's in a tiled level), dB.
    iou : float or None
        IoU of the occupied sets, when the fit tracks occupancy.
    elapsed_s : float
        Training time.
    finished_levels : int
        Levels finished.
    level_done : bool
        Whether :attr:`level` has finished.
    history : list of (elapsed_s, psnr, level)
        Every PSNR reported, for a plot.
    masks : dict of int to numpy.ndarray
        Per level, the blocks training (running level) or holding an MLP (finished levels).
    labels_version : int
        Incremented whenever :attr:`masks` change (to redraw an overlay only then).
    finished : bool
        Whether the fit ended (``Finished`` received).
    reason : str or None
        Why it ended (``Finished.reason``).
    target_psnr : float
        The fit's target PSNR (dB).
    target_iou : float or None
        The fit's target IoU, when it tracks occupancy.
    grids : tuple of tuple of int
        Every level's block grid, level 0 first (empty: taken from the events).
    blocks : dict of int to BlockReport
        Per level, the state, error and parameters of every block, as last reported (updated in
        place: :meth:`snapshot` leaves them out, :meth:`block_report` hands out copies).
    blocks_version : int
        Incremented whenever :attr:`blocks` change.
    level_psnr : dict of int to float
        Per level, its last PSNR (the running tile's while a tiled level trains).
    """

    n_levels: int
    max_steps: int
    grid0: tuple[int, ...]
    level: int = 0
    step: int = 0
    n_active: int = 0
    n_blocks: int = 0
    tiles_done: int = 0
    n_tiles: int = 1
    psnr: float = math.nan
    iou: float | None = None
    elapsed_s: float = 0.0
    finished_levels: int = 0
    level_done: bool = False
    history: list[tuple[float, float, int]] = field(default_factory=list)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    labels_version: int = 0
    finished: bool = False
    reason: str | None = None
    target_psnr: float = 40.0
    target_iou: float | None = None
    grids: tuple[tuple[int, ...], ...] = ()
    blocks: dict[int, BlockReport] = field(default_factory=dict)
    blocks_version: int = 0
    level_psnr: dict[int, float] = field(default_factory=dict)

    @classmethod
    def for_fit(cls, config: MinerConfig, layout: InputLayout) -> FitProgress:
        """The progress of a fit of ``layout`` with ``config``, before its first event."""
        grids = tuple(
            BlockGrid(shape, config.block_size).grid_shape
            for shape in level_shapes(layout.spatial_shape, config.n_levels)
        )
        return cls(
            config.n_levels, config.max_steps, grids[0], level=config.n_levels - 1,
            target_psnr=config.target_psnr, target_iou=config.target_iou, grids=grids,
        )  # fmt: skip

    # ----------------------------------------------------------------------------- update
    def update(self, event: Event) -> None:
        """Take in one event of the fit."""
        if isinstance(event, ScaleStarted):
            self.level, self.step = event.level, 0
            self.n_blocks, self.n_active = event.n_blocks, event.n_active
            self.tiles_done, self.n_tiles = 0, 1
            self.level_done, self.iou, self.psnr = False, None, math.nan
            self._paste(event.level, event.blocks, start=True)
        elif isinstance(event, Progress):
            self.level, self.step, self.n_active = event.level, event.step, event.n_active
            self.psnr, self.elapsed_s = event.psnr, event.elapsed_s
            if event.iou is not None:
                self.iou = float(event.iou)
            if event.tile is not None:
                self.tiles_done, self.n_tiles = event.tile
            self.history.append((event.elapsed_s, event.psnr, event.level))
            self.level_psnr[event.level] = event.psnr
            self._set_mask(event.level, event.active_mask)
            self._paste(event.level, event.blocks)
        elif isinstance(event, TileFinished):
            self.tiles_done, self.n_tiles = event.done, event.n_tiles
            self.step, self.elapsed_s = 0, event.elapsed_s  # the next tile starts
            self._paste(event.level, event.blocks)
        elif isinstance(event, ScaleFinished):
            self.level, self.step = event.level, event.steps
            self.psnr, self.elapsed_s = event.psnr, event.elapsed_s
            if event.iou is not None:
                self.iou = float(event.iou)
            self._set_mask(event.level, event.active_mask)
            self.n_active = int(self.masks[event.level].sum())
            self.tiles_done = self.n_tiles
            self.finished_levels += 1
            self.level_done = True
            self.history.append((event.elapsed_s, event.psnr, event.level))
            self.level_psnr[event.level] = event.psnr
            self._paste(event.level, None)
            self.blocks[event.level].settle(self.masks[event.level])
        elif isinstance(event, Finished):
            self.finished, self.reason = True, event.reason
            self.psnr, self.elapsed_s = event.psnr, event.elapsed_s
            if event.iou is not None:
                self.iou = float(event.iou)

    def _set_mask(self, level: int, mask: np.ndarray) -> None:
        self.masks[level] = np.asarray(mask, dtype=bool)
        self.labels_version += 1

    def _paste(self, level: int, part: BlockReport | None, start: bool = False) -> None:
        """Paste an event's blocks into the level's report (a new report when a level starts)."""
        whole = None if start else self.blocks.get(level)
        if whole is None:
            if level < len(self.grids):
                shape = self.grids[level]
            elif part is not None:  # no grids: a report of the whole level
                shape = tuple(r.stop for r in part.region())
            else:
                shape = self.masks[level].shape
            whole = self.blocks[level] = BlockReport.empty(shape)
        if part is not None:
            whole.paste(part)
        self.blocks_version += 1

    # ----------------------------------------------------------------------------- reading
    @property
    def level_fraction(self) -> float:
        """How much of the running level is done, in [0, 1]."""
        if self.level_done:
            return 1.0
        steps = min(self.step / self.max_steps, 1.0)
        return min((self.tiles_done + steps) / max(self.n_tiles, 1), 1.0)

    @property
    def fraction(self) -> float:
        """How much of the whole fit is done, in [0, 1] (every level counts the same)."""
        if self.finished:
            return 1.0
        running = 0.0 if self.level_done else self.level_fraction
        return min((self.finished_levels + running) / self.n_levels, 1.0)

    def block_report(self, level: int | None = None) -> BlockReport | None:
        """A copy of the blocks of ``level`` (default: :attr:`level`), ``None`` before any."""
        report = self.blocks.get(self.level if level is None else level)
        return None if report is None else report.copy()

    def level_state(self, level: int) -> str:
        """``"done"``, ``"training"`` or ``"waiting"`` (levels train coarsest first)."""
        if level > self.level or (level == self.level and self.level_done):
            return "done"
        running = level == self.level and self.n_blocks > 0  # (after its ScaleStarted)
        return "training" if running else "waiting"

    def level_rows(self) -> list[tuple[int, str, str]]:
        """Per level, coarsest first: ``(level, "31.20 dB", "done · 12/16 MLPs")``.

        The state is ``"waiting"``, ``"training · step 40"`` (``"training · tile 3/16"`` in a
        tiled level, whose PSNR is then the running tile's) or ``"done · <blocks with an MLP>/<blocks>"``.
        """
        rows = []
        for j in reversed(range(self.n_levels)):
            state = self.level_state(j)
            if state == "done" and j in self.masks:
                mask = self.masks[j]
                state += f" · {int(mask.sum())}/{mask.size} MLPs"
            elif state == "training":
                where = f"tile {self.tiles_done}/{self.n_tiles}" if self.n_tiles > 1 else ""
                state += f" · {where or f'step {self.step}'}"
            rows.append((j, format_db(self.level_psnr.get(j)), state))
        return rows

    def labels(self) -> np.ndarray:
        """The active-block overlay, shaped like level 0's block grid.

        Per level-0 block, ``1 + j`` for the finest level ``j`` whose block over it trains or holds
        an MLP (see :func:`~napari_miner.core.overlay.block_labels`).
        """
        return block_labels(self.masks, self.grid0)

    @property
    def outcome(self) -> str:
        """Whether the fit reached its target.

        ``"target reached"``, or the reason it ended, the target missed and what would reach
        it, e.g. ``"plateau: target 40 dB not reached (more capacity: raise max_splits, …)"``.
        """
        if self.reason == "target":
            return "target reached"
        target = f"target {self.target_psnr:g} dB"
        if self.target_iou is not None:
            target += f" or IoU {self.target_iou:g}"
        hint = MISSED_TARGET_HINTS.get(self.reason)
        return f"{self.reason}: {target} not reached" + (f" ({hint})" if hint else "")

    def describe(self) -> str:
        """One line: ``level 1 of 4 · tile 3/16 · step 40 · active 12/64 · PSNR 31.20 dB · 12.3 s``.

        Once the fit ended: ``done (target reached) · PSNR 40.12 dB · 9.8 s`` or
        ``done (max_steps: target 40 dB not reached (raise max_steps)) · PSNR 38.21 dB · 9.3 s``.
        """
        if self.finished:
            text = f"done ({self.outcome}) · PSNR {format_db(self.psnr)}"
            return text + self._iou_text() + f" · {self.elapsed_s:.1f} s"
        where = f"step {self.step}"
        if self.n_tiles > 1:
            where = f"tile {self.tiles_done}/{self.n_tiles} · {where}"
        return (
            f"level {self.level} of {self.n_levels} · {where} · active {self.n_active}/"
            f"{self.n_blocks} · PSNR {format_db(self.psnr)}{self._iou_text()} · "
            f"{self.elapsed_s:.1f} s"
        )

    def _iou_text(self) -> str:
        if self.iou is None or not math.isfinite(self.iou):
            return ""
        return f" · IoU {self.iou:.3f}"

    def snapshot(self) -> FitProgress:
        """A copy to hand to another thread.

        History and masks are shared, not copied; the block reports, updated in place, are left
        out (see :meth:`block_report`).
        """
        return replace(
            self, history=self.history, masks=dict(self.masks), blocks={},
            level_psnr=dict(self.level_psnr),
        )  # fmt: skip
