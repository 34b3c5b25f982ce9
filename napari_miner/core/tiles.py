"""Tiles: rectangles (boxes) of whole blocks that cut a level's block grid.

A level's block grid is cut into tiles of ``tile_blocks`` blocks per axis (the last tile along an axis
may be smaller). Tiles are the unit of out-of-core training (a tile trains on its region of the level's
target only) and of storage (a model store keeps each tile in chunk files of its own). Tiles are
numbered by their position in the tile grid, in C order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from .blocks import BlockGrid

__all__ = ["tile_blocks_region", "tile_grid", "tile_indices", "tile_pixel_region", "tiles_within"]


def tile_grid(grid: BlockGrid, tile_blocks: Sequence[int]) -> tuple[int, ...]:
    """Tiles along each axis of a level cut into tiles of ``tile_blocks`` blocks."""
    return tuple(math.ceil(g / t) for g, t in zip(grid.grid_shape, tile_blocks, strict=True))


def tile_indices(grid: BlockGrid, tile_blocks: Sequence[int]) -> list[tuple[int, ...]]:
    """Every tile position of a level, in C order."""
    return list(itertools.product(*(range(n) for n in tile_grid(grid, tile_blocks))))


def tile_blocks_region(
    grid: BlockGrid, tile_blocks: Sequence[int], index: Sequence[int]
) -> tuple[slice, ...]:
    """The block-grid slices of tile ``index``."""
    return tuple(
        slice(i * t, min((i + 1) * t, g))
        for i, t, g in zip(index, tile_blocks, grid.grid_shape, strict=True)
    )


def tile_pixel_region(
    grid: BlockGrid, tile_blocks: Sequence[int], index: Sequence[int]
) -> tuple[slice, ...]:
    """The level pixels of tile ``index`` (whole blocks, clipped to the level's shape)."""
    b = grid.block_size
    return tuple(
        slice(r.start * b, min(r.stop * b, s))
        for r, s in zip(tile_blocks_region(grid, tile_blocks, index), grid.shape, strict=True)
    )


def tiles_within(
    grid: BlockGrid, outer_blocks: Sequence[int], index: Sequence[int], inner_blocks: Sequence[int]
) -> list[tuple[int, ...]]:
    """The tiles of ``inner_blocks`` that lie inside tile ``index`` of ``outer_blocks``.

    Each outer tile side must be a multiple of the inner one (or reach the grid's end).
    """
    region = tile_blocks_region(grid, outer_blocks, index)
    ranges = [
        range(r.start // t, math.ceil(r.stop / t))
        for r, t in zip(region, inner_blocks, strict=True)
    ]
    return list(itertools.product(*ranges))
