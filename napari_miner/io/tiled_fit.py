"""Out-of-core fitting: train a model tile by tile into a tiled store, resumably.

The input is read lazily (a dask array over a zarr store, typically). Level targets come from a
streamed area pyramid written to a work directory next to the store. Levels are trained coarse to
fine; each tile reads its region of the level's target, decodes the coarser levels beneath it from the
store (only the blocks under the tile plus a halo) and writes its MLPs to the store as soon as it is
trained. Running the same fit into the same store again continues with the tiles not yet finished.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import MinerConfig
from ..core.errors import ModelFormatError
from ..core.events import Event, Finished, Progress, ScaleFinished, ScaleStarted, TileFinished
from ..core.layout import InputLayout
from ..core.model import PyramidModel
from ..core.pyramid import upsampled_region
from ..core.tiles import (
    backward_chunk,
    dense_tile,
    plan_tiles,
    tile_blocks_region,
    tile_energy,
    tile_pixel_region,
    train_tile,
)
from ..core.trainer import Stopwatch, prune_threshold, tile_seed
from .store import check_overwritable
from .tiled_store import TiledStore, is_tiled_store

__all__ = ["TiledFit", "TileJob", "work_directory"]


def release_memory() -> None:
    """Hand the memory freed by a tile back to the operating system.

    Tiles allocate and free large, differently sized buffers; glibc keeps freed memory in its
    arenas, so without this the resident size of a long fit creeps up with the number of tiles
    (measured: 1.4 GB instead of 1.0 GB for a 16384² image), although the memory in use does not.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def work_directory(store: str | PathLike[str]) -> Path:
    """Scratch directory of a tiled fit into ``store`` (level targets and estimates).

    Deleted when the fit completes.
    """
    path = Path(os.fspath(store))
    return path.parent / f".{path.name}.work"


def open_estimate(store: str | PathLike[str], level: int) -> Any:
    """The stored estimate of ``level`` (see :func:`prepare_estimates`), for reading and writing."""
    import zarr

    return zarr.open_array(str(work_directory(store) / "estimates" / str(level)), mode="r+")


def prepare_estimates(store: TiledStore) -> None:
    """Create the level estimates of a fit in its work directory (levels 1 and up).

    Every finished tile writes its level's estimate (the coarser estimate plus its residual) over
    its region; the tiles of the next finer level read from it the region under them. The arrays
    are chunked by tile, so tiles never write the same chunk. Estimates that are missing while
    tiles of their level are finished (the work directory was removed between two runs) are
    decoded again from the store.
    """
    import zarr

    root = work_directory(store.path) / "estimates"
    model = None
    for level in range(1, store.n_levels):
        path = root / str(level)
        if (path / ".zarray").exists():
            continue
        grid = store.grids[level]
        side = [t * grid.block_size for t in store.tile_blocks[level]]
        zarr.create_array(
            str(path), shape=(store.layout.n_channels, *grid.shape), dtype="<f4",
            chunks=(store.layout.n_channels, *side), fill_value=0.0, zarr_format=2,
            overwrite=True,
        )  # fmt: skip
        done = store.done_tiles(level)
        if done:
            model = model or store.model(PyramidModel)
            estimate = zarr.open_array(str(path), mode="r+")
            for index in sorted(done):
                region = tile_pixel_region(grid, store.tile_blocks[level], index)
                values = model.decode_normalized(level, region).numpy()
                estimate[(slice(None), *region)] = values


class TileJob:
    """Everything needed to train tiles of a fit into its store, in any process.

    Opens the store and the level targets; :meth:`run` trains one tile and writes it. A process of a
    distributed fit builds one job per store and runs the tiles it is given.

    Parameters
    ----------
    store_path : path
        The tiled store (created by :class:`TiledFit`).
    targets : list
        The level targets (see :func:`napari_miner.io.targets.build_targets`).
    device : torch.device
        Where to train.
    memory_budget : int
        Bytes for training tensors and caches.
    """

    def __init__(
        self,
        store_path: str | PathLike[str],
        targets: list[Any],
        device: torch.device,
        memory_budget: int,
    ) -> None:
        self.store = TiledStore.open(store_path, mode="r+")
        self.store_path = Path(os.fspath(store_path))
        self.device = device
        self.memory_budget = memory_budget
        self.targets = targets

    def _inputs(
        self, level: int, index: tuple[int, ...]
    ) -> tuple[tuple[slice, ...], torch.Tensor, torch.Tensor]:
        """A tile's region, its target and the upsampled coarser estimate over it.

        The coarser estimate is read from the level estimates that finished tiles leave in the
        work directory: only the region under the tile plus a one-pixel halo, whatever the size
        of the image and however many levels lie below.
        """
        from . import targets

        store = self.store
        region = tile_pixel_region(store.grids[level], store.tile_blocks[level], index)
        target = torch.from_numpy(targets.read_region(self.targets[level], region))
        target = target.to(self.device)
        if level == store.n_levels - 1:
            return region, target, torch.zeros_like(target)
        parent = open_estimate(self.store_path, level + 1)

        def read(bounds: list[tuple[int, int]]) -> torch.Tensor:
            values = parent[(slice(None), *(slice(lo, hi) for lo, hi in bounds))]
            return torch.from_numpy(np.ascontiguousarray(values)).to(self.device)

        bounds = [(r.start, r.stop) for r in region]
        return region, target, upsampled_region(read, store.grids[level + 1].shape, bounds)

    def energies(self, level: int, index: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Residual energy and value count of every block of a tile (see ``tile_energy``)."""
        _, target, base = self._inputs(level, index)
        energies = tile_energy(target, base, self.store.config.block_size)
        del target, base
        release_memory()
        return energies

    def run(
        self,
        level: int,
        index: tuple[int, ...],
        threshold: float,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> Iterator[Progress | dict[str, Any]]:
        """Train tile ``index`` of ``level`` and write it; yields its progress, then its record.

        ``threshold`` is the level's pruning threshold (see :func:`level_threshold`).
        """
        store = self.store
        config = store.config
        grid = store.grids[level]
        region, target, base = self._inputs(level, index)
        chunk = backward_chunk(config, level, grid.ndim, self.memory_budget, self.device.type)
        started = time.perf_counter()
        seed = tile_seed(config.seed, level, index)
        result = None
        for item in train_tile(level, target, base, config, seed, chunk, clock, threshold):
            if isinstance(item, Progress):
                yield item
            else:
                result = item
        assert result is not None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        result_psnr = result.psnr
        record = {
            "n_mlps": result.level.n_mlps,
            "sse": result.sse,
            "count": result.count,
            "steps": result.steps,
            "elapsed_s": time.perf_counter() - started,
            "intersection": result.intersection,
            "union": result.union,
        }
        mask, weights, biases = dense_tile(result.level)
        if level > 0:  # what the finer level reads; before the tile's record, which comes last
            estimate = open_estimate(self.store_path, level)
            estimate[(slice(None), *region)] = result.estimate
        store.write_tile(level, index, mask, weights, biases, record)
        del result, target, base
        release_memory()
        yield {**record, "psnr": result_psnr, "mask": mask, "region": region}


class TiledFit:
    """A resumable out-of-core fit of ``array`` into the tiled store at ``store_path``.

    Parameters
    ----------
    array : dask.array.Array
        The input, read lazily.
    layout : InputLayout
        Its layout and value range (from a streamed scan).
    digest : str
        Checksum of the input; a store holding a fit of another input is not resumed.
    config : MinerConfig
        Training settings.
    device : torch.device
        Where to train.
    store_path : path
        The model store to create, or to resume.
    memory_budget : int
        Bytes for the fit's tensors; sets the tile size.
    provenance : dict
        Stored with the model.
    model_class : type
        Class of the returned model (built on the store, read tile by tile).
    overwrite : bool
        Replace a store that holds another fit instead of refusing.
    tile_blocks : int, optional
        Upper limit of a tile's side, in blocks.
    client : distributed.Client, optional
        Train the tiles of every level as tasks on this dask.distributed cluster (see
        :mod:`napari_miner.io.distributed`); the workers need the store and the input on a shared
        file system.
    worker_device : str
        Device the workers train on (``"auto"``: each worker's own GPU when it has one).
    """

    def __init__(
        self,
        array: Any,
        layout: InputLayout,
        digest: str,
        config: MinerConfig,
        device: torch.device,
        store_path: str | PathLike[str],
        memory_budget: int,
        provenance: dict[str, Any],
        model_class: type[PyramidModel] = PyramidModel,
        overwrite: bool = False,
        tile_blocks: int | None = None,
        client: Any = None,
        worker_device: str = "auto",
    ) -> None:
        config.check_shape(layout.spatial_shape)
        self.client = client
        self.worker_device = worker_device
        self.array = array
        self.layout = layout
        self.digest = digest
        self.config = config
        self.device = device
        self.path = Path(os.fspath(store_path))
        self.memory_budget = int(memory_budget)
        self.provenance = dict(provenance)
        self.model_class = model_class
        self.tile_blocks = plan_tiles(
            layout.spatial_shape,
            config,
            layout.n_channels,
            self.memory_budget,
            device.type,
            tile_blocks,
        )
        self.store = self._open_or_create(overwrite)
        spent = float(self.store.attributes.get("metadata", {}).get("train_time_s", 0.0))
        self._watch = Stopwatch(device, spent)

    # ----------------------------------------------------------------------- the store
    def _input_info(self) -> dict[str, Any]:
        return {
            "shape": list(self.layout.shape),
            "dtype": self.layout.dtype,
            "digest": self.digest,
        }

    def _open_or_create(self, overwrite: bool) -> TiledStore:
        path = self.path
        if not path.parent.is_dir():
            raise FileNotFoundError(
                f"cannot fit into {path}: directory {path.parent} does not exist"
            )
        if os.path.lexists(path):
            reason = self._resume_problem()
            if reason is None:
                return TiledStore.open(path, mode="r+")
            if not overwrite:
                raise ModelFormatError(
                    f"{path} already holds {reason}; choose another output path, or replace it "
                    "(overwrite=True; --overwrite on the command line)"
                )
            check_overwritable(path.resolve())  # only ever replace a model store
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            shutil.rmtree(work_directory(path), ignore_errors=True)
        shutil.rmtree(work_directory(path) / "estimates", ignore_errors=True)  # of another fit
        return TiledStore.create(
            path, self.layout, self.config, self.tile_blocks, self._input_info(), self.provenance
        )

    def _resume_problem(self) -> str | None:
        """Why the existing store at the path cannot be resumed, or ``None`` if it can."""
        path = self.path
        if path.is_dir() and not any(path.iterdir()):
            return "an empty directory"
        if not is_tiled_store(path):
            return "something that is not a tiled napari-miner fit"
        store = TiledStore.open(path)
        if store.config != self.config:
            return "a fit with other settings"
        if store.attributes.get("input") != self._input_info():
            return "a fit of another input"
        if store.tile_blocks != [tuple(t) for t in self.tile_blocks]:
            return "a fit with another tile size (memory budget or device)"
        return None

    # ----------------------------------------------------------------------- training
    def model(self) -> PyramidModel:
        """The model trained so far, read from the store tile by tile."""
        return TiledStore.open(self.path).model(self.model_class, self.memory_budget // 4)

    def run(self) -> Iterator[Event]:
        """Train the unfinished tiles coarse to fine; yields events, ending with ``Finished``."""
        from .targets import build_targets

        store = self.store
        if not store.complete:
            self._watch.start()
            targets = build_targets(
                self.array,
                self.layout,
                self.config.n_levels,
                work_directory(self.path),
                fingerprint=self.digest,
            )
            prepare_estimates(store)
            self._watch.pause()
            if self.client is None:
                tiles: _Tiles = _LocalTiles(
                    TileJob(self.path, targets, self.device, self.memory_budget)
                )
            else:
                tiles = _ClusterTiles(
                    self.client, self.path, targets, self.worker_device, self.memory_budget
                )
            for level in reversed(range(self.config.n_levels)):
                yield from self._train_level(tiles, level)
            store.finish({**self.provenance, "train_time_s": self._watch.elapsed})
            shutil.rmtree(work_directory(self.path), ignore_errors=True)
        stats = store.level_stats(0)
        yield Finished(
            self.model(),
            float(stats.get("psnr", float("nan"))),
            self._watch.elapsed,
            "completed",
            stats.get("iou"),
        )

    def _train_level(self, runner: _Tiles, level: int) -> Iterator[Event]:
        store = self.store
        grid = store.grids[level]
        tiles = store.tiles(level)
        done = store.done_tiles(level)
        stats = store.level_stats(level)
        yield ScaleStarted(level=level, n_blocks=grid.n_blocks, n_active=stats["n_mlps"])
        threshold = store.prune_threshold(level)
        if threshold is None:
            self._watch.start()
            energies = runner.energies(level, tiles)
            threshold = level_threshold(store, level, energies.__getitem__)
            store.set_prune_threshold(level, threshold)
            self._watch.pause()
        mlp_mask = store.model(PyramidModel, 0).levels[level].active_mask() if done else None
        if mlp_mask is None:
            mlp_mask = np.zeros(grid.grid_shape, dtype=bool)
        todo = [index for index in tiles if index not in done]
        self._watch.start()
        for index, item in runner.train(level, todo, threshold, lambda: self._watch.elapsed):
            blocks = tile_blocks_region(grid, store.tile_blocks[level], index)
            self._watch.pause()
            if isinstance(item, Progress):
                active = np.zeros(grid.grid_shape, dtype=bool)
                active[blocks] = item.active_mask
                yield dataclasses.replace(item, active_mask=active, tile=(len(done), len(tiles)))
                self._watch.start()
                continue
            done.add(index)
            mlp_mask[blocks] = item["mask"].astype(bool)
            yield TileFinished(
                level=level,
                index=index,
                done=len(done),
                n_tiles=len(tiles),
                region=item["region"],
                n_mlps=int(item["n_mlps"]),
                psnr=float(item["psnr"]),
                elapsed_s=self._watch.elapsed,
            )
            self._watch.start()
        self._watch.pause()
        stats = store.level_stats(level)
        model = self.model()
        yield ScaleFinished(
            level=level,
            reconstruction=normalized_level(model, level),
            active_mask=mlp_mask,
            psnr=float(stats.get("psnr", float("nan"))),
            elapsed_s=self._watch.elapsed,
            steps=int(stats["steps"]),
            iou=stats.get("iou"),
        )


class _Tiles:
    """Runs the tiles of a level: in this process, or on a cluster."""

    def energies(
        self, level: int, tiles: list[tuple[int, ...]]
    ) -> dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def train(
        self,
        level: int,
        tiles: list[tuple[int, ...]],
        threshold: float,
        clock: Callable[[], float],
    ) -> Iterator[tuple[tuple[int, ...], Progress | dict[str, Any]]]:
        raise NotImplementedError


class _LocalTiles(_Tiles):
    def __init__(self, job: TileJob) -> None:
        self.job = job

    def energies(self, level, tiles):  # noqa: D102
        return {index: self.job.energies(level, index) for index in tiles}

    def train(self, level, tiles, threshold, clock):  # noqa: D102
        for index in tiles:
            for item in self.job.run(level, index, threshold, clock):
                yield index, item


class _ClusterTiles(_Tiles):
    def __init__(
        self, client: Any, path: Path, targets: list[Any], device: str, memory_budget: int
    ) -> None:
        from .distributed import FitSpec, scatter_spec

        self.client = client
        self.spec = FitSpec(str(path.resolve()), targets, device, memory_budget)
        self.scattered = scatter_spec(client, self.spec)

    def energies(self, level, tiles):  # noqa: D102
        from .distributed import distributed_energies

        return distributed_energies(self.client, self.spec, self.scattered, level, tiles)

    def train(self, level, tiles, threshold, clock):  # noqa: D102
        from .distributed import distributed_tiles

        yield from distributed_tiles(
            self.client, self.spec, self.scattered, level, tiles, threshold
        )


def level_threshold(
    store: TiledStore,
    level: int,
    energies: Callable[[tuple[int, ...]], tuple[np.ndarray, np.ndarray]],
) -> float:
    """The pruning threshold of ``level`` from the block energies of all its tiles.

    ``energies(index)`` returns a tile's block energies and counts (e.g. :meth:`TileJob.energies`,
    possibly run elsewhere).
    """
    grid = store.grids[level]
    energy = np.zeros(grid.grid_shape, dtype=np.float32)
    counts = np.zeros(grid.grid_shape, dtype=np.float64)
    for index in store.tiles(level):
        blocks = tile_blocks_region(grid, store.tile_blocks[level], index)
        energy[blocks], counts[blocks] = energies(index)
    return prune_threshold(
        torch.from_numpy(energy.reshape(-1)), torch.from_numpy(counts.reshape(-1)), store.config
    )


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
