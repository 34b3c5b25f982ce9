"""Where a fit's results go: the levels of an in-memory model, or a model store on disk.

A *sink* keeps the finished tiles of a fit and what the engine decides about each level (its pruning
threshold and, at the end, its statistics), and builds the model trained so far:

* :class:`MemorySink` — an in-memory fit: every level one bank of MLPs;
* :class:`StoreSink` — an out-of-core fit: the model store, written tile by tile (by this process,
  or by the workers of a cluster), under the store's lock, resumable.

A sink's writer (:class:`MemorySink` itself, or :class:`StoreWriter`) receives the tiles trained by
:class:`~napari_miner.fitting.work.TileWork`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import MinerConfig
from ..core.errors import ModelFormatError
from ..core.layout import InputLayout
from ..core.metrics import psnr_from_mse
from ..core.mlp_bank import pack_bank
from ..core.model import LevelParams, PyramidModel, empty_levels
from ..core.tiles import tile_blocks_region, tile_indices, tiles_within
from ..core.training import TileResult
from ..io.atomic import PathLock, atomic_directory, remove_leftovers
from ..io.records import records_stats
from ..io.schema import level_headers
from ..io.store import ModelStore, check_overwritable, is_model_store, store_tile_blocks
from .sources import work_directory

__all__ = ["MemorySink", "StoreSink", "StoreWriter", "open_fit_store"]

Running = tuple[int, tuple[slice, ...], LevelParams]
"""A tile being trained: its level, its block region and a snapshot of its MLPs."""


def _level_ids(
    level: LevelParams, region: tuple[slice, ...], grid_shape: tuple[int, ...]
) -> torch.Tensor:
    """Flat level block ids of a tile's MLPs (its ids are flat in the tile's own block grid)."""
    local = np.unravel_index(level.block_ids.cpu().numpy(), level.grid.grid_shape)
    coords = tuple(c + r.start for c, r in zip(local, region, strict=True))
    return torch.from_numpy(np.ravel_multi_index(coords, grid_shape).astype(np.int64))


def _merged(into: LevelParams, tile: LevelParams, region: tuple[slice, ...]) -> LevelParams:
    """``into`` with the MLPs of ``tile`` (a tile of the level at block ``region``) added.

    Every bank is merged: a split bank's blocks are ``2**s`` times smaller, so its region is that
    many times larger (clipped to its grid).
    """
    ids = torch.cat([into.block_ids.cpu(), _level_ids(tile, region, into.grid.grid_shape)])
    order = torch.argsort(ids)
    weights = [
        torch.cat([a.cpu(), b.cpu()])[order]
        for a, b in zip(into.weights, tile.weights, strict=True)
    ]
    biases = [
        torch.cat([a.cpu(), b.cpu()])[order] for a, b in zip(into.biases, tile.biases, strict=True)
    ]
    extra = []
    for mine, theirs in zip(into.extra, tile.extra, strict=True):
        factor = into.grid.block_size // mine.grid.block_size
        scaled = tuple(
            slice(r.start * factor, min(r.stop * factor, g))
            for r, g in zip(region, mine.grid.grid_shape, strict=True)
        )
        extra.append(_merged(mine, theirs, scaled))
    bits = tile.bits if tile.bits is not None else into.bits
    return LevelParams(into.grid, ids[order], weights, biases, dict(into.stats), tuple(extra), bits)


class MemorySink:
    """The levels of an in-memory fit (see the module docstring)."""

    def __init__(self, layout: InputLayout, config: MinerConfig, metadata: dict[str, Any]) -> None:
        self.layout, self.config = layout, config
        self.metadata = dict(metadata)
        self.levels = empty_levels(layout.spatial_shape, config, layout.n_channels)
        self._done: dict[int, set[tuple[int, ...]]] = {j: set() for j in range(config.n_levels)}
        self._pruning: dict[int, tuple[float, int]] = {}
        self._sums = {
            j: dict.fromkeys(("sse", "count", "intersection", "union"), 0.0) for j in self._done
        }
        self._steps = dict.fromkeys(self._done, 0)
        self.complete = False

    def done_tiles(self, level: int, tile_blocks: tuple[int, ...]) -> set[tuple[int, ...]]:
        """Training tiles of ``level`` already finished."""
        return set(self._done[level])

    def pruning(self, level: int) -> tuple[float, int] | None:
        """The level's pruning threshold and number of blocks to train, once decided."""
        return self._pruning.get(level)

    def set_pruning(self, level: int, threshold: float, n_active: int) -> None:
        """Record the level's pruning decision."""
        self._pruning[level] = (threshold, n_active)

    def write_tile(
        self,
        level: int,
        index: tuple[int, ...],
        tile_blocks: tuple[int, ...],
        result: TileResult,
        block_stats: dict[str, np.ndarray],
        elapsed_s: float,
    ) -> None:
        """Add a trained tile's MLPs to its level (see :class:`~napari_miner.fitting.work.TileWriter`)."""
        region = tile_blocks_region(self.levels[level].grid, tile_blocks, index)
        self.levels[level] = _merged(self.levels[level], result.level, region)
        for name, total in self._sums[level].items():
            self._sums[level][name] = total + float(block_stats[name].sum())
        self._steps[level] = max(self._steps[level], result.steps)
        self._done[level].add(index)

    def level_stats(self, level: int) -> dict[str, Any]:
        """Statistics of ``level`` over its finished tiles."""
        sums = self._sums[level]
        stats: dict[str, Any] = {
            "n_blocks": self.levels[level].grid.n_blocks,
            "n_mlps": self.levels[level].n_mlps,
            "steps": self._steps[level],
        }
        if sums["count"]:
            stats["psnr"] = psnr_from_mse(sums["sse"] / sums["count"])
            if self.config.iou_threshold is not None:
                union = sums["union"]
                stats["iou"] = 1.0 if union == 0 else sums["intersection"] / union
        return stats

    def finish_level(self, level: int, stats: dict[str, Any]) -> None:
        """Store the statistics of a finished level."""
        self.levels[level].stats = dict(stats)

    def finished_stats(self, level: int) -> dict[str, Any]:
        """The statistics stored when ``level`` finished."""
        return dict(self.levels[level].stats)

    def checkpoint(self, train_time_s: float, force: bool = False) -> None:
        """Nothing to persist in memory."""

    def finish(self, metadata: dict[str, Any]) -> None:
        """The fit completed."""
        self.metadata = dict(metadata)
        self.complete = True

    def model(self, running: Running | None = None) -> PyramidModel:
        """The model trained so far (a running tile at its current weights)."""
        levels = list(self.levels)
        if running is not None:
            level, region, params = running
            levels[level] = _merged(levels[level], params, region)
        return PyramidModel(self.layout, self.config, levels, dict(self.metadata))

    def close(self) -> None:
        """Nothing to release."""


class StoreWriter:
    """Writes trained tiles into a model store, split into the store's tiles."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def write_tile(
        self,
        level: int,
        index: tuple[int, ...],
        tile_blocks: tuple[int, ...],
        result: TileResult,
        block_stats: dict[str, np.ndarray],
        elapsed_s: float,
    ) -> None:
        """Write a trained tile (see :class:`~napari_miner.fitting.work.TileWriter`).

        The training tile is cut into the store's tiles; every bank is written densely (zeros
        where a block has no MLP).
        """
        store = self.store
        info = store.header.levels[level]
        banks = (result.level, *result.level.extra)
        dense = [
            _dense(bank, header.params_per_mlp)
            for bank, header in zip(banks, info.banks, strict=True)
        ]
        origin = tile_blocks_region(info.grid, tile_blocks, index)
        total = dense[0][0].size
        for inner in tiles_within(info.grid, tile_blocks, index, store.tile_blocks(level)):
            tile = []
            for header, (mask, params) in zip(info.banks, dense, strict=True):
                factor = info.grid.block_size // header.grid.block_size
                region = tile_blocks_region(header.grid, header.tile_blocks, inner)
                local = tuple(
                    slice(r.start - o.start * factor, r.stop - o.start * factor)
                    for r, o in zip(region, origin, strict=True)
                )
                tile.append((mask[local], params[local]))
            main = tile_blocks_region(info.grid, store.tile_blocks(level), inner)
            local = tuple(
                slice(r.start - o.start, r.stop - o.start)
                for r, o in zip(main, origin, strict=True)
            )
            stats = {name: float(values[local].sum()) for name, values in block_stats.items()}
            stats["steps"] = result.steps
            stats["elapsed_s"] = elapsed_s * tile[0][0].size / total
            store.write_tile(level, inner, tile, stats)


def _dense(bank: LevelParams, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A bank's ``(*grid)`` mask and ``(*grid, P)`` packed MLPs (zeros where a block has none)."""
    shape = bank.grid.grid_shape
    mask = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    dense = np.zeros((mask.size, width), dtype="<f4")
    ids = bank.block_ids.cpu().numpy()
    mask[ids] = 1
    if ids.size:
        dense[ids] = pack_bank(bank.weights, bank.biases).numpy()
    return mask.reshape(shape), dense.reshape(*shape, width)


def _plan_attribute(plan: list[tuple[int, ...]]) -> dict[str, Any]:
    return {"work_tiles": [list(t) for t in plan]}


def open_fit_store(
    path: str | os.PathLike[str],
    layout: InputLayout,
    config: MinerConfig,
    plan: list[tuple[int, ...]],
    input_info: dict[str, Any],
    metadata: dict[str, Any],
    overwrite: bool,
) -> tuple[ModelStore, PathLock]:
    """Lock the store of an out-of-core fit, then resume it or create it.

    The lock is taken first, so that a fit running into the same store is detected before anything
    is looked at. A store holding an unfinished fit of the same input, settings and tile plan is
    resumed; anything else is refused, or with ``overwrite`` replaced (only a model store or an
    empty directory is ever replaced).

    Raises
    ------
    StoreLockedError
        If another process is writing the store.
    ModelFormatError
        If the path holds something that cannot be resumed and ``overwrite`` is not set.
    """
    target = Path(os.fspath(path)).expanduser()
    target = target.parent.resolve() / target.name
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"cannot fit into {target}: directory {target.parent} does not exist"
        )
    lock = PathLock(target).acquire("fitted")
    try:
        if os.path.lexists(target):
            store, problem = _resumable(target, config, plan, input_info)
            if store is not None:
                return store, lock
            if not overwrite:
                raise ModelFormatError(
                    f"{target} already holds {problem}; choose another output path, or replace it "
                    "(overwrite=True; --overwrite on the command line)"
                )
            check_overwritable(target)
            shutil.rmtree(target) if target.is_dir() else target.unlink()
            shutil.rmtree(work_directory(target), ignore_errors=True)
        remove_leftovers(target)
        bits = [config.weight_bits] * config.n_levels
        ones = [(1,) * len(layout.spatial_shape)] * config.n_levels
        headers = level_headers(layout, config, ones, bits)
        tiles = [store_tile_blocks(h, within) for h, within in zip(headers, plan, strict=True)]
        with atomic_directory(target) as temporary:
            ModelStore.create(
                temporary, layout, config, tiles, metadata, input_info, _plan_attribute(plan),
                bits,
            )  # fmt: skip
        shutil.rmtree(work_directory(target) / "estimates", ignore_errors=True)  # of another fit
        return ModelStore.open(target), lock
    except BaseException:
        lock.release()
        raise


def _resumable(
    target: Path, config: MinerConfig, plan: list[tuple[int, ...]], input_info: dict[str, Any]
) -> tuple[ModelStore | None, str]:
    """The store at ``target`` if this fit can resume it, else why not."""
    if target.is_dir() and not any(target.iterdir()):
        return None, "an empty directory"
    if not is_model_store(target):
        return None, "something that is not a napari-miner model"
    try:
        store = ModelStore.open(target)
    except ModelFormatError as error:
        return None, f"a model that cannot be resumed ({error})"
    if store.config != config:
        return None, "a fit with other settings"
    if store.header.input != input_info:
        return None, "a fit of another input"
    if store.header.fit != _plan_attribute(plan):
        return None, "a fit with another tile plan (memory budget, tile size or device)"
    return store, ""


class StoreSink:
    """The model store of an out-of-core fit (see the module docstring).

    Parameters
    ----------
    store : ModelStore
        The store, opened or created by :func:`open_fit_store`.
    lock : PathLock
        Its lock, released by :meth:`close`.
    """

    CHECKPOINT_S = 10.0
    """The training time spent is saved in the store at most this often (and at every level end)."""

    def __init__(self, store: ModelStore, lock: PathLock) -> None:
        self.store, self.lock = store, lock
        self.writer = StoreWriter(store)
        self._saved = -float("inf")

    @property
    def complete(self) -> bool:
        """Whether the store holds a finished fit."""
        return self.store.complete

    @property
    def spent_s(self) -> float:
        """Training time spent by earlier runs of a resumed fit."""
        return float(self.store.header.metadata.get("train_time_s", 0.0))

    def _refresh(self) -> None:
        self.store = ModelStore.open(self.store.path)
        self.writer.store = self.store

    def done_tiles(self, level: int, tile_blocks: tuple[int, ...]) -> set[tuple[int, ...]]:
        """Training tiles of ``level`` whose every store tile is finished."""
        self._refresh()
        store = self.store
        grid, records = store.grid(level), store.records(level)
        inner = store.tile_blocks(level)
        return {
            index
            for index in tile_indices(grid, tile_blocks)
            if all(t in records for t in tiles_within(grid, tile_blocks, index, inner))
        }

    def pruning(self, level: int) -> tuple[float, int] | None:
        """The level's pruning threshold and number of blocks to train, once decided."""
        info = self.store.header.levels[level]
        if info.prune_threshold is None or info.n_active is None:
            return None
        return info.prune_threshold, info.n_active

    def set_pruning(self, level: int, threshold: float, n_active: int) -> None:
        """Record the level's pruning decision (before any of its tiles is trained)."""
        self.store.update_level(level, prune_threshold=threshold, n_active=n_active)

    def level_stats(self, level: int) -> dict[str, Any]:
        """Statistics of ``level`` summed over the records of its finished tiles."""
        self._refresh()
        info = self.store.header.levels[level]
        stats = records_stats(
            self.store.records(level), info, self.store.config.iou_threshold is not None
        )
        for name in ("tiles_done", "n_tiles"):
            stats.pop(name, None)
        return stats

    def finish_level(self, level: int, stats: dict[str, Any]) -> None:
        """Store the statistics of a finished level."""
        self.store.update_level(level, stats=stats)

    def finished_stats(self, level: int) -> dict[str, Any]:
        """The statistics stored when ``level`` finished."""
        return self.store.level_stats(level)

    def checkpoint(self, train_time_s: float, force: bool = False) -> None:
        """Save the training time spent so far (throttled), so that a resumed fit counts it."""
        now = time.monotonic()
        if force or now - self._saved >= self.CHECKPOINT_S:
            self._saved = now
            metadata = {**self.store.header.metadata, "train_time_s": train_time_s}
            self.store.update_attributes(metadata=metadata)

    def finish(self, metadata: dict[str, Any]) -> None:
        """Mark the fit complete, with its final provenance."""
        self.store.update_attributes(status="complete", metadata=metadata)

    def model(self, running: Running | None = None) -> PyramidModel:
        """The model in the store (its finished tiles), read on demand."""
        return ModelStore.open(self.store.path).model()

    def close(self) -> None:
        """Release the store's lock."""
        self.lock.release()
