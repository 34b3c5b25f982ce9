"""The one coarse-to-fine fit engine, over tiles.

:class:`FitEngine` trains the levels of a pyramid from the coarsest to level 0. Each level is cut
into training tiles (an in-memory fit: one tile per level); for each level the engine

1. decides the pruning threshold once over the whole level (from every tile's residual energies),
2. trains the tiles that are not finished yet and collects what they report,
3. records the level's statistics,

and it ends with the reason why (the target reached, or not). What differs between fits is plugged
in: the target source (:mod:`~napari_miner.fitting.sources`), the sink (:mod:`~napari_miner.fitting.sinks`)
and the runner that trains tiles in this process or on a cluster (:mod:`~napari_miner.fitting.runners`).
The same events come out of every fit (:mod:`napari_miner.core.events`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..core.block_state import BlockReport, BlockState
from ..core.blocks import BlockGrid
from ..core.config import MinerConfig
from ..core.events import Event, Finished, Progress, ScaleFinished, ScaleStarted, TileFinished
from ..core.layout import InputLayout
from ..core.model import PyramidModel
from ..core.pyramid import level_shapes
from ..core.tiles import tile_blocks_region, tile_indices, tile_pixel_region
from ..core.training import prune_threshold
from .work import TileDone

__all__ = ["FitEngine", "Stopwatch", "final_reason", "normalized_level"]


class Stopwatch:
    """Accumulates training time; paused while the consumer of the events holds one.

    ``offset`` is time already spent (by an earlier run of a resumed fit).
    """

    def __init__(self, device: torch.device, offset: float = 0.0) -> None:
        self._device = device
        self._total = offset
        self._since: float | None = None

    def start(self) -> None:
        """Start (or resume) counting."""
        if self._since is None:
            self._since = time.perf_counter()

    def pause(self) -> float:
        """Stop counting (after the device finished its queued work); returns the total."""
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        if self._since is not None:
            self._total += time.perf_counter() - self._since
            self._since = None
        return self._total

    @property
    def elapsed(self) -> float:
        """Total time counted so far."""
        running = 0.0 if self._since is None else time.perf_counter() - self._since
        return self._total + running


def final_reason(config: MinerConfig, stats: dict[str, Any]) -> str:
    """Why a fit ended, from level 0's statistics.

    ``"target"`` when it reached ``target_psnr`` (or ``target_iou``); otherwise why its level-0
    tiles stopped short of it: ``"plateau"``, ``"max_steps"``, ``"retired"`` or ``"pruned"``
    (the most frequent among them), or ``"completed"`` when that is not known (tiles of an
    earlier run).
    """
    if stats.get("psnr", -np.inf) >= config.target_psnr:
        return "target"
    if config.target_iou is not None and stats.get("iou", -np.inf) >= config.target_iou:
        return "target"
    ended = {k: v for k, v in stats.get("ended", {}).items() if k != "target"}
    return max(ended, key=ended.get) if ended else "completed"


class FitEngine:
    """Trains a MINER model coarse to fine, tile by tile; :meth:`run` yields the events.

    Parameters
    ----------
    config : MinerConfig
        Training settings.
    layout : InputLayout
        Layout of the input.
    plan : list of tuple of int
        Training tile shape (blocks per axis) of every level, level 0 first.
    source : MemoryTargets or ZarrTargets
        Targets and level estimates.
    sink : MemorySink or StoreSink
        Where the results go.
    runner : LocalRunner or ClusterRunner
        What trains the tiles.
    clock : Stopwatch
        Training time (with what earlier runs of a resumed fit spent).
    provenance : dict
        Stored with the model.
    """

    def __init__(
        self,
        config: MinerConfig,
        layout: InputLayout,
        plan: list[tuple[int, ...]],
        source: Any,
        sink: Any,
        runner: Any,
        clock: Stopwatch,
        provenance: dict[str, Any],
    ) -> None:
        self.config, self.layout, self.plan = config, layout, plan
        self.source, self.sink, self.runner = source, sink, runner
        self.clock = clock
        self.provenance = dict(provenance)
        self.grids = [
            BlockGrid(shape, config.block_size)
            for shape in level_shapes(layout.spatial_shape, config.n_levels)
        ]

    def model(self) -> PyramidModel:
        """The model as trained so far (mid-tile in memory: the running tile's current weights)."""
        model = self.sink.model(self.runner.running())
        model.metadata.update(self._metadata())
        return model

    def _metadata(self) -> dict[str, Any]:
        return {**self.provenance, "train_time_s": self.clock.elapsed}

    def run(self) -> Iterator[Event]:
        """Train the unfinished tiles coarse to fine; yields events, ending with ``Finished``."""
        try:
            if not self.sink.complete:
                self.clock.start()
                done = {j: self.sink.done_tiles(j, self.plan[j]) for j in range(len(self.plan))}
                self.source.prepare(done, self.sink.model)
                for level in reversed(range(self.config.n_levels)):
                    yield from self._level(level)
                    self.source.release(level)
                self.clock.pause()
                self.sink.finish(self._metadata())
                self.source.close(completed=True)
            stats = self.sink.finished_stats(0)
            yield Finished(
                self.model(),
                float(stats.get("psnr", float("nan"))),
                self.clock.elapsed,
                final_reason(self.config, stats),
                stats.get("iou"),
            )
        finally:
            self.clock.pause()
            if not self.sink.complete:  # closed or failed: keep the time spent for a resume
                self.sink.checkpoint(self.clock.elapsed, force=True)
            self.sink.close()

    def _pause(self) -> None:
        self.clock.pause()
        self.sink.checkpoint(self.clock.elapsed)

    def _level(self, level: int) -> Iterator[Event]:
        grid, tile_blocks = self.grids[level], self.plan[level]
        tiles = tile_indices(grid, tile_blocks)
        done = self.sink.done_tiles(level, tile_blocks)
        pruning = self.sink.pruning(level)
        energy = None
        if pruning is None:
            energy = np.zeros(grid.grid_shape, dtype=np.float32)
            counts = np.zeros(grid.grid_shape, dtype=np.float64)
            for index, (tile_energy, tile_counts) in self.runner.energies(
                level, tiles, tile_blocks
            ):
                region = tile_blocks_region(grid, tile_blocks, index)
                energy[region], counts[region] = tile_energy, tile_counts
            threshold = prune_threshold(
                torch.from_numpy(energy), torch.from_numpy(counts), self.config
            )
            pruning = (threshold, int((energy > threshold).sum()))
            self.sink.set_pruning(level, *pruning)
        threshold, n_active = pruning
        self._pause()
        yield ScaleStarted(level, grid.n_blocks, n_active, _waiting(energy, threshold))
        self.clock.start()
        mask = self.sink.model().levels[level].active_mask() if done else None
        if mask is None:
            mask = np.zeros(grid.grid_shape, dtype=bool)
        todo = [index for index in tiles if index not in done]
        whole = len(tiles) == 1
        ended: dict[str, int] = {}
        for index, item in self.runner.train(
            level, todo, tile_blocks, threshold, lambda: self.clock.elapsed
        ):
            blocks = tile_blocks_region(grid, tile_blocks, index)
            report = item.blocks  # (of the tile: placed in the level's grid)
            report = None if report is None else report.at(tuple(b.start for b in blocks))
            if isinstance(item, Progress):
                if not whole:
                    active = np.zeros(grid.grid_shape, dtype=bool)
                    active[blocks] = item.active_mask
                    item = dataclasses.replace(item, active_mask=active, blocks=report)
                self._pause()
                yield dataclasses.replace(item, tile=(len(done), len(tiles)))
                self.clock.start()
                continue
            assert isinstance(item, TileDone)
            done.add(index)
            ended[item.ended] = ended.get(item.ended, 0) + 1
            mask[blocks] = item.mask
            self._pause()
            yield TileFinished(
                level=level, index=index, done=len(done), n_tiles=len(tiles),
                region=tile_pixel_region(grid, tile_blocks, index), n_mlps=item.n_mlps,
                psnr=item.psnr, elapsed_s=self.clock.elapsed, blocks=report,
            )  # fmt: skip
            self.clock.start()
        stats = self.sink.level_stats(level)
        stats["elapsed_s"] = self.clock.elapsed
        if ended:
            stats["ended"] = ended  # why its tiles stopped (those trained in this run)
        self.sink.finish_level(level, stats)
        reconstruction = self.source.estimate_array(level)
        if reconstruction is None:
            reconstruction = normalized_level(self.sink.model(), level)
        self.clock.pause()
        self.sink.checkpoint(self.clock.elapsed, force=True)
        yield ScaleFinished(
            level=level,
            reconstruction=reconstruction,
            active_mask=mask,
            psnr=float(stats.get("psnr", float("nan"))),
            elapsed_s=stats["elapsed_s"],
            steps=int(stats.get("steps", 0)),
            iou=stats.get("iou"),
        )
        self.clock.start()


def _waiting(energy: np.ndarray | None, threshold: float) -> BlockReport | None:
    """A level's blocks before training: waiting for an MLP or pruned, errors their energies."""
    if energy is None:
        return None
    state = np.where(energy > threshold, BlockState.WAITING, BlockState.PRUNED).astype(np.uint8)
    return BlockReport(state, energy.astype(np.float32), np.zeros(energy.shape, np.int32))


def normalized_level(model: PyramidModel, level: int, chunk_blocks: int = 16) -> Any:
    """Lazy dask array of a level's estimate in normalised units, shaped ``(*spatial, C)``."""
    import dask.array as da

    shape = model.level_shape(level)
    side = chunk_blocks * model.config.block_size
    channels = model.layout.n_channels
    chunks = da.core.normalize_chunks((*(side,) * len(shape), channels), (*shape, channels))

    def decode(block_info: Any = None) -> np.ndarray:
        location = block_info[None]["array-location"]
        region = tuple(slice(lo, hi) for lo, hi in location[:-1])
        return model.decode_normalized(level, region).movedim(0, -1).numpy()

    return da.map_blocks(
        decode, dtype=np.float32, chunks=chunks, meta=np.empty((0,) * (len(shape) + 1), np.float32)
    )
