"""Fixed-size block grids: padding, unfolding a signal into blocks and folding it back.

A level of spatial shape ``S`` with block side ``b`` has ``ceil(S / b)`` blocks per axis; the signal is
edge-padded to whole blocks, so no pixel is ever cropped. Blocks are numbered in C order over the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BlockGrid:
    """The block layout of one pyramid level.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the level.
    block_size : int
        Side of every block.
    """

    shape: tuple[int, ...]
    block_size: int

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return len(self.shape)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Blocks along each axis."""
        return tuple(math.ceil(s / self.block_size) for s in self.shape)

    @property
    def n_blocks(self) -> int:
        """Total number of blocks."""
        return math.prod(self.grid_shape)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        """Spatial shape after padding to whole blocks."""
        return tuple(g * self.block_size for g in self.grid_shape)

    @property
    def block_pixels(self) -> int:
        """Pixels (voxels) per block."""
        return self.block_size**self.ndim

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Edge-pad a ``(C, *shape)`` tensor to :attr:`padded_shape`."""
        pad: list[int] = []
        for s, p in zip(reversed(self.shape), reversed(self.padded_shape), strict=True):
            pad += [0, p - s]
        if not any(pad):
            return x
        return F.pad(x.unsqueeze(0), pad, mode="replicate").squeeze(0)

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """Cut a ``(C, *shape)`` tensor into blocks shaped ``(n_blocks, C, block_pixels)``."""
        return blocks_from_array(self.pad(x), self.block_size)

    def fold(self, blocks: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`unfold`: ``(n_blocks, C, block_pixels)`` to ``(C, *shape)``."""
        full = array_from_blocks(blocks, self.grid_shape, self.block_size)
        return full[(slice(None),) + tuple(slice(0, s) for s in self.shape)]

    def valid_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(n_blocks, 1, block_pixels)`` mask, 1 on real pixels and 0 on padding."""
        ones = torch.ones((1, *self.shape), device=device)
        padded = torch.zeros((1, *self.padded_shape), device=device)
        padded[(slice(None),) + tuple(slice(0, s) for s in self.shape)] = ones
        return blocks_from_array(padded, self.block_size)

    def mask(self, block_ids: torch.Tensor) -> np.ndarray:
        """Boolean mask shaped :attr:`grid_shape`, True at the given flat block indices."""
        mask = np.zeros(self.n_blocks, dtype=bool)
        mask[block_ids.cpu().numpy()] = True
        return mask.reshape(self.grid_shape)

    def block_range(self, region: Sequence[slice]) -> tuple[tuple[int, int], ...]:
        """Per axis, the half-open range of block indices that intersect ``region``."""
        b = self.block_size
        return tuple((r.start // b, -(-r.stop // b)) for r in region)


def blocks_from_array(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cut ``(C, *spatial)`` whose sides are multiples of ``block_size`` into ``(n, C, b**ndim)``."""
    c, spatial = x.shape[0], x.shape[1:]
    ndim = len(spatial)
    grid = [s // block_size for s in spatial]
    split: list[int] = [c]
    for g in grid:
        split += [g, block_size]
    # axes: C, g0, b0, g1, b1, ... -> g0, g1, ..., C, b0, b1, ...
    order = [1 + 2 * i for i in range(ndim)] + [0] + [2 + 2 * i for i in range(ndim)]
    out = x.reshape(split).permute(order)
    return out.reshape(math.prod(grid), c, block_size**ndim)


def array_from_blocks(
    blocks: torch.Tensor, grid_shape: Sequence[int], block_size: int
) -> torch.Tensor:
    """Inverse of :func:`blocks_from_array`: ``(n, C, b**ndim)`` to ``(C, *(grid * b))``."""
    c = blocks.shape[1]
    return _in_place(blocks, grid_shape, block_size).reshape(
        c, *(g * block_size for g in grid_shape)
    )


def _in_place(blocks: torch.Tensor, grid_shape: Sequence[int], block_size: int) -> torch.Tensor:
    """``(n, C, b**ndim)`` blocks as a ``(C, g0, b, g1, b, ...)`` view, each where it lies."""
    ndim = len(grid_shape)
    x = blocks.reshape(*grid_shape, blocks.shape[1], *([block_size] * ndim))
    # axes: g0..g{n-1}, C, b0..b{n-1} -> C, g0, b0, g1, b1, ...
    order = [ndim]
    for i in range(ndim):
        order += [i, ndim + 1 + i]
    return x.permute(order)


def add_blocks(
    out: torch.Tensor, blocks: torch.Tensor, grid_shape: Sequence[int], block_size: int
) -> torch.Tensor:
    """Add ``(n, C, b**ndim)`` blocks into a contiguous ``(C, *(grid * b))`` ``out``, in place.

    :func:`array_from_blocks` added to ``out`` without assembling the array first.
    """
    placed = _in_place(blocks, grid_shape, block_size)
    out.view(placed.shape).add_(placed)
    return out


def local_coordinates(
    block_size: int, ndim: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Pixel-centre coordinates of one block in [-1, 1], shaped ``(ndim, block_size**ndim)``."""
    axis = (torch.arange(block_size, dtype=torch.float32, device=device) * 2 + 1) / block_size - 1
    mesh = torch.meshgrid(*([axis] * ndim), indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh])
