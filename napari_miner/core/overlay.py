"""The active-blocks overlay: which pyramid level still holds an MLP under each full-resolution block."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .model import PyramidModel

__all__ = ["active_block_labels", "block_labels"]


def block_labels(masks: Mapping[int, np.ndarray], grid0_shape: Sequence[int]) -> np.ndarray:
    """Level-0 block-grid labels: ``1 + j`` for the finest level ``j`` whose mask covers a cell.

    Block ``(a, b)`` of level ``j`` covers the level-0 blocks ``a*2**j ... (a+1)*2**j - 1`` (and
    the same along ``b``), so its mask is repeated ``2**j`` times per axis and cropped to the
    level-0 grid.

    Parameters
    ----------
    masks : mapping of int to numpy.ndarray
        Boolean block-grid mask per level (levels without an entry cover nothing).
    grid0_shape : sequence of int
        Level 0's block grid.

    Returns
    -------
    numpy.ndarray
        Unsigned integers shaped ``grid0_shape``: ``1 + j`` for the finest level ``j`` whose block
        covering the cell is set in its mask, 0 where none is.
    """
    n_levels = max(masks, default=0) + 1
    shape = tuple(int(s) for s in grid0_shape)
    labels = np.zeros(shape, dtype=np.min_scalar_type(n_levels))
    for j in sorted(masks, reverse=True):  # finer levels overwrite coarser ones
        mask = np.asarray(masks[j], dtype=bool)
        for axis in range(mask.ndim):
            mask = np.repeat(mask, 2**j, axis=axis)
        labels[mask[tuple(slice(0, s) for s in shape)]] = j + 1
    return labels


def active_block_labels(
    model: PyramidModel,
) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """Label image of the finest level that has an MLP, one cell per level-0 block.

    Parameters
    ----------
    model : PyramidModel
        A fitted model.

    Returns
    -------
    labels : numpy.ndarray
        :func:`block_labels` of the levels' MLP masks.
    scale : tuple of float
        Level-0 pixels per cell (the block size) per spatial axis.
    translate : tuple of float
        ``(block_size - 1) / 2`` per spatial axis: with ``scale``, puts each cell's centre on
        the centre of the level-0 pixels it covers, as napari places an image's pixels.
    """
    grid0 = model.levels[0].grid
    masks = {j: level.active_mask() for j, level in enumerate(model.levels)}
    labels = block_labels(masks, grid0.grid_shape)
    b = float(grid0.block_size)
    ndim = len(grid0.grid_shape)
    return labels, (b,) * ndim, ((b - 1.0) / 2.0,) * ndim
