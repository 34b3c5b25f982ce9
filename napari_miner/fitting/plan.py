"""Planning a fit: how large its training tiles are, and how much work a backward chunk takes.

A level whose blocks all fit in the memory budget is trained as one tile (an in-memory fit is always
trained so); finer levels of a huge input are cut into cubes (squares) of a power-of-two side of
blocks, as large as the budget allows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..core.blocks import BlockGrid
from ..core.config import MinerConfig
from ..core.errors import ConfigError
from ..core.mlp_bank import layer_sizes, params_per_mlp
from ..core.pyramid import level_shapes

__all__ = ["backward_chunk", "bytes_per_block", "plan_tiles", "whole_levels"]


# share of the budget for one tile's training tensors; the rest is for reading the target and
# decoding the coarser levels beneath the tile (and their cache)
_TRAINING_SHARE = 0.5
_CPU_CHUNK = 16  # blocks per chunk of the backward pass on CPUs (cache-sized)


def bytes_per_block(config: MinerConfig, level: int, ndim: int, n_channels: int) -> int:
    """Estimated training memory of one block at ``level``, without the backward-pass workspace.

    Counts the block's signal tensors (target, coarser estimate, residual, standardised goals, masks
    and their copies: about ten per channel) and its parameters five times over (parameters, Adam's
    two moments, gradients and the stored copy).
    """
    pixels = config.block_size**ndim
    sizes = layer_sizes(ndim, config.width_at(level), config.hidden_layers, n_channels)
    params = params_per_mlp(sizes)
    return 4 * (10 * pixels * n_channels + 5 * params)


def workspace_per_block(config: MinerConfig, level: int, ndim: int) -> int:
    """Memory of one block inside a chunk of the hand-written backward pass."""
    pixels = config.block_size**ndim
    n_layers = config.hidden_layers + 2
    return 4 * (2 * n_layers + 2) * config.width_at(level) * pixels


def plan_tiles(
    shape: Sequence[int],
    config: MinerConfig,
    n_channels: int,
    memory_budget: int,
    device_type: str = "cpu",
    max_tile_blocks: int | None = None,
) -> list[tuple[int, ...]]:
    """Tile shape (in blocks, per axis) of every level, level 0 first.

    A level whose blocks all fit in the budget (and in ``max_tile_blocks`` per side) is one tile;
    finer levels get cubes (squares) of a power-of-two side, as large as the budget allows.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the input.
    config : MinerConfig
        Training settings.
    n_channels : int
        Channels of the input.
    memory_budget : int
        Bytes the fit may use for its tensors (on the training device and on the host).
    device_type : str
        ``"cpu"`` or ``"cuda"``: on GPUs the backward-pass workspace of the whole tile counts.
    max_tile_blocks : int, optional
        Upper limit of a tile's side in blocks (smaller tiles make more, shorter tasks, e.g. to
        spread a level over the workers of a cluster).

    Raises
    ------
    ConfigError
        If the budget cannot hold even a tile of one block, or ``max_tile_blocks`` < 1.
    """
    if max_tile_blocks is not None and (
        not isinstance(max_tile_blocks, int)
        or isinstance(max_tile_blocks, bool)
        or max_tile_blocks < 1
    ):
        raise ConfigError(f"tile_blocks must be a positive integer, got {max_tile_blocks!r}")
    ndim = len(shape)
    plans = []
    for j, level_shape in enumerate(level_shapes(shape, config.n_levels)):
        grid = BlockGrid(level_shape, config.block_size)
        per_block = bytes_per_block(config, j, ndim, n_channels)
        workspace = workspace_per_block(config, j, ndim)
        if device_type == "cpu":
            fits = int((_TRAINING_SHARE * memory_budget - _CPU_CHUNK * workspace) // per_block)
        else:
            fits = int(_TRAINING_SHARE * memory_budget // (per_block + workspace))
        if fits < 1:
            need = math.ceil((per_block + _CPU_CHUNK * workspace) / _TRAINING_SHARE)
            raise ConfigError(
                f"memory_budget={memory_budget} bytes is too small for even one block of level {j}: "
                f"give at least {need} bytes"
            )
        limit = max_tile_blocks if max_tile_blocks is not None else max(grid.grid_shape)
        if grid.n_blocks <= fits and max(grid.grid_shape) <= limit:
            plans.append(grid.grid_shape)
            continue
        side = min(1 << int(math.floor(math.log2(fits) / ndim)), limit)
        plans.append(tuple(min(side, g) for g in grid.grid_shape))
    return plans


def backward_chunk(
    config: MinerConfig, level: int, ndim: int, memory_budget: int | None, device_type: str
) -> int:
    """Blocks per chunk of the backward pass: cache-sized on CPUs, budget-sized on GPUs.

    Without a budget (an in-memory fit) a GPU processes the whole bank at once.
    """
    if device_type == "cpu":
        return _CPU_CHUNK
    if memory_budget is None:
        return 1 << 20
    workspace = workspace_per_block(config, level, ndim)
    return max(1, int(_TRAINING_SHARE * memory_budget // workspace))


def whole_levels(shape: Sequence[int], config: MinerConfig) -> list[tuple[int, ...]]:
    """The plan of a fit that trains every level as one tile (level 0 first)."""
    return [
        BlockGrid(level_shape, config.block_size).grid_shape
        for level_shape in level_shapes(shape, config.n_levels)
    ]
