"""The active-blocks overlay: which pyramid level still holds an MLP under each full-resolution block."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .model import PyramidModel

__all__ = ["active_block_labels"]


def active_block_labels(
    model: PyramidModel,
) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """Label image of the finest level that has an MLP, one cell per level-0 block.

    Block ``(a, b)`` of level ``j`` covers the level-0 blocks ``a*2**j ... (a+1)*2**j - 1`` (and
    the same along ``b``), so its mask is repeated ``2**j`` times per axis and cropped to the
    level-0 grid.

    Parameters
    ----------
    model : PyramidModel
        A fitted model.

    Returns
    -------
    labels : numpy.ndarray
        Unsigned integers shaped like level 0's block grid: ``1 + j`` for the finest level ``j``
        whose block covering the cell has an MLP, 0 where no level has one.
    scale : tuple of float
        Level-0 pixels per cell (the block size) per spatial axis.
    translate : tuple of float
        ``(block_size - 1) / 2`` per spatial axis: with ``scale``, puts each cell's centre on
        the centre of the level-0 pixels it covers, as napari places an image's pixels.
    """
    grid0 = model.levels[0].grid
    shape = grid0.grid_shape
    labels = np.zeros(shape, dtype=np.min_scalar_type(model.n_levels))
    for j in reversed(range(model.n_levels)):  # finer levels overwrite coarser ones
        mask = model.levels[j].active_mask()
        factor = 2**j
        for axis in range(mask.ndim):
            mask = np.repeat(mask, factor, axis=axis)
        covered = mask[tuple(slice(0, s) for s in shape)]
        labels[covered] = j + 1
    b = float(grid0.block_size)
    ndim = len(shape)
    return labels, (b,) * ndim, ((b - 1.0) / 2.0,) * ndim
