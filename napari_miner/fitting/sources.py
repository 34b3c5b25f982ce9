"""Where a fit's targets come from, and where each level's estimate is kept for the next level.

The fit engine trains a tile on ``target - base``: the level's target over the tile, and ``base``, the
coarser level's estimate upsampled over it. A *target source* provides both:

* :class:`MemoryTargets` — an in-memory fit: the area pyramid of the normalised signal, and each
  level's estimate, as tensors on the training device;
* :class:`ZarrTargets` — an out-of-core fit: the input read region by region (level 0) and the
  coarser targets streamed once to a work directory beside the store
  (:func:`napari_miner.io.targets.build_targets`), and each level's estimate written there by the
  tiles that finish, as zarr arrays chunked by tile. It can be pickled, so that workers of a
  cluster read the same files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.blocks import BlockGrid
from ..core.layout import InputLayout
from ..core.model import PyramidModel
from ..core.pyramid import gaussian_targets, level_shapes
from ..core.tiles import tile_pixel_region

__all__ = ["MemoryTargets", "ZarrTargets", "work_directory"]

Region = Sequence[slice]
Bounds = Sequence[tuple[int, int]]


def _index(region: Region) -> tuple[slice, ...]:
    return (slice(None), *region)


class MemoryTargets:
    """Targets and estimates of an in-memory fit, on the training device.

    Parameters
    ----------
    signal : torch.Tensor
        The normalised ``(C, *spatial)`` float32 signal.
    n_levels : int
        Pyramid levels.
    device : torch.device
        Where the targets and estimates live (the training device).
    """

    def __init__(self, signal: torch.Tensor, n_levels: int, device: torch.device) -> None:
        self._signal = signal
        self._n_levels = n_levels
        self._device = device
        self._targets: list[torch.Tensor | None] = []
        self._estimates: dict[int, torch.Tensor] = {}

    def prepare(self, done: Mapping[int, set], model: Callable[[], PyramidModel]) -> None:
        """Compute the area pyramid of the signal (once)."""
        if not self._targets:
            self._targets = list(gaussian_targets(self._signal.to(self._device), self._n_levels))

    def target(self, level: int, region: Region, device: torch.device) -> torch.Tensor:
        """The target of ``level`` over ``region``."""
        target = self._targets[level]
        assert target is not None, f"the target of level {level} was released"
        return target[_index(region)].to(device)

    def read_estimate(self, level: int, bounds: Bounds, device: torch.device) -> torch.Tensor:
        """The estimate of ``level`` over ``bounds`` (written by its finished tiles)."""
        region = tuple(slice(lo, hi) for lo, hi in bounds)
        return self._estimates[level][_index(region)].to(device)

    def write_estimate(self, level: int, region: Region, values: torch.Tensor) -> None:
        """Store a finished tile's estimate of ``level`` over ``region``."""
        estimate = self._estimates.get(level)
        if estimate is None:
            target = self._targets[level]
            assert target is not None
            estimate = self._estimates[level] = torch.zeros_like(target)
        estimate[_index(region)] = values.to(estimate.device)

    def estimate_array(self, level: int) -> np.ndarray | None:
        """The level's whole estimate as a ``(*spatial, C)`` array (what ``ScaleFinished`` carries)."""
        estimate = self._estimates.get(level)
        return None if estimate is None else estimate.movedim(0, -1).cpu().numpy()

    def release(self, level: int) -> None:
        """Free what only ``level`` needed (its target, and the coarser level's estimate)."""
        self._estimates.pop(level + 1, None)
        if level < len(self._targets):
            self._targets[level] = None

    def close(self, completed: bool) -> None:
        """Drop everything."""
        self._targets, self._estimates = [], {}


def work_directory(store: str | os.PathLike[str]) -> Path:
    """Scratch directory of an out-of-core fit into ``store``: level targets and estimates."""
    path = Path(os.fspath(store))
    return path.parent / f".{path.name}.work"


def _has_links(directory: Path) -> bool:
    """Whether anything under ``directory`` is a symbolic link or a special file."""
    for parent, names, files in os.walk(directory):
        for name in names + files:
            path = os.path.join(parent, name)
            if os.path.islink(path) or not (os.path.isdir(path) or os.path.isfile(path)):
                return True
    return False


class ZarrTargets:
    """Targets and estimates of an out-of-core fit, in the work directory of its store.

    Parameters
    ----------
    array : dask.array.Array
        The input, read lazily.
    layout : InputLayout
        Its layout and value range.
    digest : str
        Checksum of the input (stored targets of another input are rebuilt).
    block_size : int
        Block side of the fit.
    tile_blocks : sequence of tuple of int
        Training tile shape of every level (the estimates are chunked by tile, so that tiles of a
        level never write the same chunk).
    store : path
        The model store being fitted (the work directory lies beside it).
    """

    def __init__(
        self,
        array: Any,
        layout: InputLayout,
        digest: str,
        block_size: int,
        tile_blocks: Sequence[tuple[int, ...]],
        store: str | os.PathLike[str],
    ) -> None:
        self.array = array
        self.layout = layout
        self.digest = digest
        self.block_size = block_size
        self.tile_blocks = [tuple(t) for t in tile_blocks]
        self.directory = work_directory(store)
        self.targets: list[Any] = []
        self._grids = [
            BlockGrid(shape, block_size)
            for shape in level_shapes(layout.spatial_shape, len(self.tile_blocks))
        ]

    def prepare(self, done: Mapping[int, set], model: Callable[[], PyramidModel]) -> None:
        """Stream the level targets to the work directory and create the level estimates.

        Complete targets of the same input are reused; estimates of finished tiles that are
        missing (the work directory was removed between two runs) are decoded again from the
        store's ``model()``.
        """
        import zarr

        from ..io.targets import build_targets

        if self.directory.exists() and _has_links(self.directory):
            shutil.rmtree(self.directory)  # scratch data: never write through a planted link
        self.targets = build_targets(
            self.array, self.layout, len(self.tile_blocks), self.directory, fingerprint=self.digest
        )
        decoded = None
        for level in range(1, len(self.tile_blocks)):
            path = self.directory / "estimates" / str(level)
            if (path / ".zarray").exists():
                continue
            grid = self._grids[level]
            side = [t * self.block_size for t in self.tile_blocks[level]]
            zarr.create_array(
                str(path), shape=(self.layout.n_channels, *grid.shape), dtype="<f4",
                chunks=(self.layout.n_channels, *side), fill_value=0.0, zarr_format=2,
                overwrite=True,
            )  # fmt: skip
            for index in sorted(done.get(level, ())):
                decoded = decoded or model()
                region = tile_pixel_region(grid, self.tile_blocks[level], index)
                values = decoded.decode_normalized(level, region, exact=True)
                self.write_estimate(level, region, values)

    def target(self, level: int, region: Region, device: torch.device) -> torch.Tensor:
        """The target of ``level`` over ``region``, read from the input or the work directory."""
        from ..io.targets import read_region

        return torch.from_numpy(read_region(self.targets[level], region)).to(device)

    def _estimate(self, level: int, mode: str) -> Any:
        import zarr

        return zarr.open_array(str(self.directory / "estimates" / str(level)), mode=mode)

    def read_estimate(self, level: int, bounds: Bounds, device: torch.device) -> torch.Tensor:
        """The stored estimate of ``level`` over ``bounds``."""
        values = self._estimate(level, "r")[_index([slice(lo, hi) for lo, hi in bounds])]
        return torch.from_numpy(np.ascontiguousarray(values)).to(device)

    def write_estimate(self, level: int, region: Region, values: torch.Tensor) -> None:
        """Store a finished tile's estimate (level 0's is never read, so it is not kept)."""
        if level > 0:
            self._estimate(level, "r+")[_index(region)] = values.detach().cpu().numpy()

    def estimate_array(self, level: int) -> np.ndarray | None:
        """``None``: an out-of-core level is shown decoded from the store, lazily."""
        return None

    def release(self, level: int) -> None:
        """Nothing to free: everything is on disk."""

    def close(self, completed: bool) -> None:
        """Remove the work directory once the fit completed."""
        if completed:
            shutil.rmtree(self.directory, ignore_errors=True)
