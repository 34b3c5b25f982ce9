"""The work on one training tile, the same in every process: read, train, write.

:class:`TileWork` reads a tile's target and the coarser estimate under it from a target source
(:mod:`napari_miner.fitting.sources`), trains the tile (:class:`~napari_miner.core.training.LevelTraining`),
stores the tile's estimate for the next finer level, and hands the trained MLPs and their per-block
statistics to a writer (:mod:`napari_miner.fitting.sinks`). The engine runs it in its own process, or a
cluster's workers run it (:mod:`napari_miner.fitting.distributed`).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..core.block_state import BlockReport
from ..core.blocks import BlockGrid, local_coordinates
from ..core.config import MinerConfig
from ..core.events import Progress
from ..core.layout import InputLayout
from ..core.metrics import psnr_from_mse
from ..core.pyramid import level_shapes, upsampled_region
from ..core.tiles import tile_pixel_region
from ..core.training import LevelTraining, TileResult, residual_energies, tile_seed
from .plan import backward_chunk

__all__ = ["TileDone", "TileWork", "TileWriter"]

STAT_NAMES = ("sse", "count", "intersection", "union")


@dataclass(frozen=True)
class TileDone:
    """What the engine learns of a finished training tile (sent back by cluster workers too).

    ``mask`` is the tile's block mask of the blocks that got an MLP; the sums are over the tile's
    pixels and channels (occupancy counts are 0 unless the IoU is tracked); ``blocks`` the final
    state, error (of the decoded estimate) and parameters of its blocks.
    """

    level: int
    index: tuple[int, ...]
    mask: np.ndarray
    steps: int
    ended: str
    sse: float
    count: float
    intersection: float
    union: float
    elapsed_s: float
    blocks: BlockReport | None = None

    @property
    def n_mlps(self) -> int:
        """Blocks of the tile that hold an MLP."""
        return int(self.mask.sum())

    @property
    def psnr(self) -> float:
        """PSNR of the level's estimate over the tile."""
        return psnr_from_mse(self.sse / max(self.count, 1.0))


class TileWriter(Protocol):
    """Where finished tiles go (an in-memory model, or a model store)."""

    def write_tile(
        self,
        level: int,
        index: tuple[int, ...],
        tile_blocks: tuple[int, ...],
        result: TileResult,
        block_stats: dict[str, np.ndarray],
        elapsed_s: float,
    ) -> None:
        """Keep a trained tile; ``block_stats`` holds per-block sums shaped like its block grid."""
        ...


def release_memory() -> None:
    """Hand memory freed by a tile back to the operating system (glibc keeps it otherwise).

    Tiles allocate and free large buffers of varying sizes; without this the resident size of a
    long out-of-core fit creeps up with the number of tiles (measured: 1.4 instead of 1.0 GB for a
    16384² image), although the memory in use does not.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


class TileWork:
    """Trains tiles of a fit, one at a time.

    Parameters
    ----------
    config : MinerConfig
        Training settings.
    layout : InputLayout
        Layout of the input.
    source : MemoryTargets or ZarrTargets
        Targets and level estimates.
    writer : TileWriter
        Where trained tiles go.
    device : torch.device
        Where to train.
    memory_budget : int or None
        Bytes for a tile's training tensors (sets the backward chunk on GPUs); ``None`` for an
        in-memory fit.
    release : bool
        Hand freed memory back to the operating system after every tile (out-of-core fits).
    """

    def __init__(
        self,
        config: MinerConfig,
        layout: InputLayout,
        source: Any,
        writer: TileWriter,
        device: torch.device,
        memory_budget: int | None,
        release: bool = False,
    ) -> None:
        self.config, self.layout = config, layout
        self.source, self.writer = source, writer
        self.device = device
        self.memory_budget = memory_budget
        self.release = release
        self.grids = [
            BlockGrid(shape, config.block_size)
            for shape in level_shapes(layout.spatial_shape, config.n_levels)
        ]
        self.current: tuple[int, tuple[slice, ...], LevelTraining] | None = None
        """The tile being trained: its level, block region and training (for snapshots)."""
        self._last: tuple[Any, tuple[tuple[slice, ...], torch.Tensor, torch.Tensor]] | None = None

    def _inputs(
        self, level: int, index: tuple[int, ...], tile_blocks: tuple[int, ...]
    ) -> tuple[tuple[slice, ...], torch.Tensor, torch.Tensor]:
        """A tile's pixel region, its target and the upsampled coarser estimate over it.

        The last tile's inputs are kept until another tile's are read: a level that is one tile
        computes its energies and then trains on the same inputs.
        """
        key = (level, index, tile_blocks)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        self._last = None
        region = tile_pixel_region(self.grids[level], tile_blocks, index)
        target = self.source.target(level, region, self.device)
        if level == self.config.n_levels - 1:
            base = torch.zeros_like(target)
        else:
            base = upsampled_region(
                lambda bounds: self.source.read_estimate(level + 1, bounds, self.device),
                self.grids[level + 1].shape,
                [(r.start, r.stop) for r in region],
            )
        self._last = (key, (region, target, base))
        return region, target, base

    def energies(
        self, level: int, index: tuple[int, ...], tile_blocks: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Residual energy and value count of every block of a tile (for the level's threshold)."""
        _, target, base = self._inputs(level, index, tile_blocks)
        energy, counts = residual_energies(target, base, self.config.block_size)
        result = energy.cpu().numpy(), counts.cpu().numpy().astype(np.float64)
        del target, base
        if self.release:
            release_memory()
        return result

    def train(
        self,
        level: int,
        index: tuple[int, ...],
        tile_blocks: tuple[int, ...],
        threshold: float,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> Iterator[Progress | TileDone]:
        """Train a tile and write it; yields its progress, then its :class:`TileDone`."""
        config = self.config
        started = time.perf_counter()
        region, target, base = self._inputs(level, index, tile_blocks)
        self._last = None  # not kept while the tile trains and after
        ndim = len(region)
        chunk = backward_chunk(config, level, ndim, self.memory_budget, self.device.type)
        coords = local_coordinates(config.block_size, ndim, self.device)
        generator = torch.Generator().manual_seed(tile_seed(config.seed, level, index))
        training = LevelTraining(
            level, target, base, config, generator, coords, chunk, clock, threshold
        )
        training.error_floor = self.layout.rounding_mse
        block_region = tuple(
            slice(r.start // config.block_size, -(-r.stop // config.block_size)) for r in region
        )
        self.current = (level, block_region, training)  # kept if the fit is closed mid-tile
        yield from training.run()
        self.current = None
        result = training.result()
        stats = self._block_stats(self.layout.as_decoded(result.estimate), target)
        blocks = training.block_report()
        blocks.loss[...] = stats["sse"] / np.maximum(stats["count"], 1.0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        self.source.write_estimate(level, region, result.estimate)
        self.writer.write_tile(level, index, tile_blocks, result, stats, elapsed)
        done = TileDone(
            level, index, result.level.active_mask(), result.steps, result.ended,
            *(float(stats[name].sum()) for name in STAT_NAMES), elapsed, blocks,
        )  # fmt: skip
        del result, training, target, base
        if self.release:
            release_memory()
        yield done

    def _block_stats(self, estimate: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-block sums over a tile: squared error, values, and occupancy counts."""
        grid = BlockGrid(tuple(target.shape[1:]), self.config.block_size)
        mask = grid.valid_mask(target.device)
        shape = grid.grid_shape
        error = grid.unfold((estimate - target).square())
        stats = {
            "sse": (error * mask).sum(dim=(1, 2)).double(),
            "count": mask.sum(dim=(1, 2)).double() * target.shape[0],
        }
        threshold = self.config.iou_threshold
        if threshold is not None:
            occupied = grid.unfold((target >= threshold).float()) > 0.5
            estimated = grid.unfold((estimate >= threshold).float()) > 0.5
            valid = mask > 0.5
            stats["intersection"] = (occupied & estimated & valid).sum(dim=(1, 2)).double()
            stats["union"] = ((occupied | estimated) & valid).sum(dim=(1, 2)).double()
        else:
            stats["intersection"] = stats["union"] = torch.zeros_like(stats["count"])
        return {name: value.cpu().numpy().reshape(shape) for name, value in stats.items()}
