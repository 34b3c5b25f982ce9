"""Typed, immutable progress events yielded by the trainer and :func:`napari_miner.fit_iter`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
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
    """

    level: int
    n_blocks: int
    n_active: int


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
    """

    level: int
    step: int
    loss: float
    psnr: float
    n_active: int
    elapsed_s: float
    active_mask: np.ndarray = field(repr=False)
    iou: float | None = None


@dataclass(frozen=True, slots=True)
class ScaleFinished:
    """A level finished training.

    Attributes
    ----------
    level : int
        Level that finished.
    reconstruction : numpy.ndarray
        The level's estimate in normalised units, shaped ``(*spatial, channels)``.
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
        Why training stopped: ``"target"`` (target PSNR or IoU reached) or ``"completed"``.
    iou : float or None
        IoU of the full-resolution reconstruction, when occupancy is tracked.
    """

    model: PyramidModel = field(repr=False)
    psnr: float
    elapsed_s: float
    reason: str
    iou: float | None = None


Event = ScaleStarted | Progress | ScaleFinished | Finished
