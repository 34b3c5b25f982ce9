"""Tiles: the unit of out-of-core training.

A level's block grid is cut into tiles, rectangles of whole blocks. A tile trains on its region of the
level's target and of the upsampled coarser estimate only, so memory follows the tile, not the image.
Blocks are independent, so a tiled level differs from a whole-level fit only where pruning and the
stopping rules look at a whole level: both are applied per tile (with the same per-pixel error
allowance). Each tile draws its initial weights from its own seed, so the result does not depend on the
order in which tiles are trained, on resuming, or on which process trained them.

:func:`plan_tiles` sizes tiles from a memory budget; :func:`train_tile` trains one tile.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .blocks import BlockGrid, local_coordinates
from .config import MinerConfig
from .errors import ConfigError
from .events import Progress, ScaleStarted
from .metrics import psnr_from_mse
from .mlp_bank import bank_forward_chunked, layer_sizes
from .model import LevelParams
from .pyramid import level_shapes
from .trainer import LevelTraining, block_energy

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
    params = sum(o * i + o for o, i in sizes)
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
    config: MinerConfig, level: int, ndim: int, memory_budget: int, device_type: str
) -> int:
    """Blocks per chunk of the backward pass: cache-sized on CPUs, budget-sized on GPUs."""
    if device_type == "cpu":
        return _CPU_CHUNK
    workspace = workspace_per_block(config, level, ndim)
    return max(1, int(_TRAINING_SHARE * memory_budget // workspace))


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


@dataclass(eq=False)
class TileResult:
    """A trained tile.

    Attributes
    ----------
    level : LevelParams
        The tile's MLPs, on a block grid of the tile's own shape.
    sse : float
        Summed squared error of the level's estimate over the tile (normalised units, every channel).
    count : int
        Values the error is summed over (pixels times channels).
    steps : int
        Optimisation steps taken.
    intersection, union : float
        Occupied-set counts of the estimate and the target (0 unless ``iou_threshold`` is set).
    estimate : numpy.ndarray
        The level's estimate over the tile (coarser estimate plus the tile's residual), float32
        ``(C, *tile shape)``: what the next finer level upsamples.
    """

    level: LevelParams
    sse: float
    count: int
    steps: int
    intersection: float
    union: float
    estimate: np.ndarray

    @property
    def psnr(self) -> float:
        """PSNR of the level's estimate over the tile."""
        return psnr_from_mse(self.sse / max(self.count, 1))


def train_tile(
    level: int,
    target: torch.Tensor,
    base: torch.Tensor,
    config: MinerConfig,
    seed: int,
    chunk: int,
    clock: Callable[[], float],
    prune_threshold: float | None = None,
) -> Iterator[Progress | TileResult]:
    """Train one tile; yields the tile's :class:`Progress` events, then its :class:`TileResult`.

    Parameters
    ----------
    level : int
        Pyramid level of the tile.
    target, base : torch.Tensor
        ``(C, *tile shape)`` target and upsampled coarser estimate over the tile, on the device.
    config : MinerConfig
        Training settings.
    seed : int
        Seed of the tile's initial weights (see :func:`tile_seed`).
    chunk : int
        Blocks per chunk of the backward pass (see :func:`backward_chunk`).
    clock : callable
        Returns the fit's elapsed training time, for the events.
    prune_threshold : float, optional
        Residual energy above which a block gets an MLP, chosen over the whole level (see
        :func:`tile_energy`); by default the tile's own pruning budget decides.
    """
    device = target.device
    ndim = target.ndim - 1
    coords = local_coordinates(config.block_size, ndim, device)
    generator = torch.Generator().manual_seed(seed)
    training = LevelTraining(
        level, target, base, config, generator, coords, chunk, clock, prune_threshold
    )
    for event in training.run():
        if isinstance(event, Progress):
            yield event
        elif not isinstance(event, ScaleStarted | bool):
            raise AssertionError(f"unexpected event {event!r}")
    params = training.level
    residual = torch.zeros_like(target)
    if params.n_mlps:
        grid = params.grid
        values = torch.zeros((grid.n_blocks, target.shape[0], grid.block_pixels), device=device)
        values[params.block_ids] = bank_forward_chunked(params.weights, params.biases, coords)
        residual = grid.fold(values)
    estimate = base + residual
    sse = float(torch.sum((estimate.double() - target.double()) ** 2))
    intersection = union = 0.0
    if config.iou_threshold is not None:
        occupied = target >= config.iou_threshold
        estimated = estimate >= config.iou_threshold
        intersection = float((occupied & estimated).sum())
        union = float((occupied | estimated).sum())
    yield TileResult(
        params.to("cpu"),
        sse,
        int(target.numel()),
        training.steps,
        intersection,
        union,
        estimate.cpu().numpy(),
    )


def tile_energy(
    target: torch.Tensor, base: torch.Tensor, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Residual energy and value count of every block of a tile, shaped like the tile's block grid.

    The energies of all tiles of a level give the level's pruning threshold
    (:func:`~napari_miner.core.trainer.prune_threshold`), so that a tiled level prunes the same
    blocks as a whole-level fit.
    """
    grid = BlockGrid(tuple(target.shape[1:]), block_size)
    mask = grid.valid_mask(target.device)
    energy = block_energy(grid.unfold(target - base), mask)
    counts = mask.sum(dim=(1, 2)) * target.shape[0]
    shape = grid.grid_shape
    return (
        energy.cpu().numpy().reshape(shape),
        counts.cpu().numpy().astype(np.float64).reshape(shape),
    )


def dense_tile(params: LevelParams) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """A tile's bank as dense arrays over its block grid (zeros where a block has no MLP).

    Returns the ``(*tile grid)`` uint8 mask and, per layer, ``(*tile grid, out, in)`` weights and
    ``(*tile grid, out, 1)`` biases.
    """
    grid = params.grid
    mask = np.zeros(grid.n_blocks, dtype=np.uint8)
    ids = params.block_ids.cpu().numpy()
    mask[ids] = 1
    dense = []
    for tensor in (*params.weights, *params.biases):
        array = np.zeros((grid.n_blocks, *tensor.shape[1:]), dtype=np.float32)
        array[ids] = tensor.detach().cpu().numpy()
        dense.append(array.reshape(*grid.grid_shape, *tensor.shape[1:]))
    n_layers = len(params.weights)
    return mask.reshape(grid.grid_shape), dense[:n_layers], dense[n_layers:]
