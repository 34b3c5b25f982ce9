"""Typed, immutable progress events yielded by the trainer and :func:`napari_miner.fit_iter`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .block_state import BlockReport
    from .model import PyramidModel


@dataclass(frozen=True, slots=True)
class ScaleStarted:
    """Training of a pyramid level begins.

    Attributes
    ----------
    level : int
        Pyramid level (0 = full resolution, ``n_levels - 1`` = coarsest).
    n_blocks : int
        Number of blocks the level is cut into.
    n_active : int
        Blocks that received an MLP (the others were pruned before training).
    blocks : BlockReport or None
        The level's blocks, waiting or pruned, with their residual energies as errors; ``None``
        when the pruning was decided by an earlier run of a resumed fit.
    """

    level: int
    n_blocks: int
    n_active: int
    blocks: BlockReport | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Progress:
    """Periodic training progress within a level.

    Attributes
    ----------
    level : int
        Level being trained.
    step : int
        Optimisation steps taken at this level.
    loss : float
        Mean squared error of the level's estimate in normalised units (value range = 1).
    psnr : float
        PSNR of the level's estimate against the level's target, in dB. At level 0 this is the PSNR
        of the full-resolution reconstruction.
    n_active : int
        Blocks still being optimised (not pruned, not retired).
    elapsed_s : float
        Training time since the fit started, excluding time spent by the consumer of the events.
    active_mask : numpy.ndarray
        Boolean mask over the level's block grid of the blocks still being optimised.
    iou : float or None
        IoU of the occupied sets (``config.iou_threshold``) of the level's estimate and target, as of
        the last convergence check; ``None`` unless occupancy is tracked.
    tile : tuple of int or None
        In a tiled (out-of-core) fit, ``(tiles finished, tiles of the level)``: ``loss``, ``psnr``,
        ``step`` and ``n_active`` are then those of the tile being trained, and ``active_mask``
        covers the whole level. ``None`` in a fit of the whole level at once.
    blocks : BlockReport or None
        State, error and parameters of the blocks of the level (in a tiled fit, of the tile being
        trained, placed at its position in the level's grid).
    """

    level: int
    step: int
    loss: float
    psnr: float
    n_active: int
    elapsed_s: float
    active_mask: np.ndarray = field(repr=False)
    iou: float | None = None
    tile: tuple[int, int] | None = None
    blocks: BlockReport | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class TileFinished:
    """A tile of a level finished training in a tiled (out-of-core) fit and is in the store.

    Attributes
    ----------
    level : int
        Level of the tile.
    index : tuple of int
        Position of the tile in the level's tile grid.
    done : int
        Tiles of the level finished so far (including tiles finished by an earlier, resumed run).
    n_tiles : int
        Tiles of the level.
    region : tuple of slice
        The tile's pixels at that level.
    n_mlps : int
        Blocks of the tile that hold an MLP.
    psnr : float
        PSNR of the level's estimate over the tile, in dB.
    elapsed_s : float
        Training time since the fit started.
    blocks : BlockReport or None
        The final state, error (of the decoded estimate) and parameters of the tile's blocks,
        placed at their position in the level's grid.
    """

    level: int
    index: tuple[int, ...]
    done: int
    n_tiles: int
    region: tuple[slice, ...] = field(repr=False)
    n_mlps: int
    psnr: float
    elapsed_s: float
    blocks: BlockReport | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ScaleFinished:
    """A level finished training.

    Attributes
    ----------
    level : int
        Level that finished.
    reconstruction : numpy.ndarray or dask.array.Array
        The level's estimate in normalised units, shaped ``(*spatial, channels)``; in a tiled fit, a
        lazy dask array decoded from the store on demand.
    active_mask : numpy.ndarray
        Boolean block-grid mask of the blocks that hold an MLP at this level.
    psnr : float
        PSNR of the level's estimate against its target, in dB.
    elapsed_s : float
        Training time since the fit started.
    steps : int
        Optimisation steps taken at this level.
    iou : float or None
        IoU of the level's occupied sets, when occupancy is tracked.
    """

    level: int
    reconstruction: np.ndarray = field(repr=False)
    active_mask: np.ndarray = field(repr=False)
    psnr: float
    elapsed_s: float
    steps: int
    iou: float | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """The fit ended; carries the fitted model.

    Attributes
    ----------
    model : PyramidModel
        The fitted model (a :class:`napari_miner.MinerModel` when fitted through the API).
        The fitted model.
    psnr : float
        PSNR of the full-resolution reconstruction, in dB (relative to the input's value range).
    elapsed_s : float
        Total training time.
    reason : str
        Why training stopped: ``"target"`` (target PSNR or IoU reached), or why level 0 stopped
        short of it: ``"plateau"`` (its error stopped improving, even with the capacity growth
        allows), ``"max_steps"``, ``"quantization"`` (rounding the weights lost it),
        ``"retired"``, ``"pruned"``, or ``"completed"`` when that is not known (see
        :data:`MISSED_TARGET_HINTS` for what would reach it).
    iou : float or None
        IoU of the full-resolution reconstruction, when occupancy is tracked.
    """

    model: PyramidModel = field(repr=False)
    psnr: float
    elapsed_s: float
    reason: str
    iou: float | None = None


MISSED_TARGET_HINTS = {
    "plateau": "more capacity: raise max_splits, split_width or hidden_width",
    "max_steps": "raise max_steps",
    "quantization": "raise weight_bits or qat_budget_db",
    "retired": "lower block_target_mse",
    "pruned": "lower prune_budget or prune_mse",
}
"""What would reach a missed target, by the reason the fit ended (:attr:`Finished.reason`)."""


Event = ScaleStarted | Progress | TileFinished | ScaleFinished | Finished
