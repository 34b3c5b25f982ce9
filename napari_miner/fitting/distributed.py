"""Tiles of an out-of-core fit as tasks on a dask.distributed cluster.

The tiles of a level are independent: each reads its target region and the coarser estimate from
shared storage, trains, and writes its own chunk files of the model store. So a level maps onto a
cluster as one task per tile. The scheduler retries the tasks of a lost worker; as every tile draws its
initial weights from its own seed and writes its own chunk files (its records last), a retried tile
writes exactly what the lost attempt would have, and no tile is lost or counted twice.

Every worker needs the store's directory and the input on a shared file system. Each worker trains on
the device named by the fit (``"auto"``: its own GPU when it has one, e.g. with dask-cuda's
``LocalCUDACluster``, which gives every worker one GPU).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..io.store import ModelStore
from .sinks import Running, StoreWriter
from .sources import ZarrTargets
from .work import TileDone, TileWork

__all__ = ["ClusterRunner", "FitSpec"]

Index = tuple[int, ...]
_WORK: dict[int, tuple[FitSpec, TileWork]] = {}
_WORK_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class FitSpec:
    """What a worker needs to train tiles of a fit: the store, the targets, device and budget.

    Scattered once to every worker; each worker builds one :class:`TileWork` per spec and reuses
    it for all the fit's tasks.
    """

    store_path: str
    source: ZarrTargets
    device: str
    memory_budget: int


def _worker_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _work(spec: FitSpec) -> TileWork:
    """The tile work of this process for ``spec`` (built once, reused by every task of the fit)."""
    with _WORK_LOCK:
        entry = _WORK.get(id(spec))
        if entry is None or entry[0] is not spec:
            try:
                from distributed import get_worker

                torch.set_num_threads(max(1, get_worker().state.nthreads))
            except (ImportError, ValueError):
                pass
            store = ModelStore.open(spec.store_path)
            work = TileWork(
                store.config, store.layout, spec.source, StoreWriter(store),
                _worker_device(spec.device), spec.memory_budget, release=True,
            )  # fmt: skip
            _WORK.clear()  # one fit at a time per worker process
            entry = _WORK[id(spec)] = (spec, work)
        return entry[1]


def energy_task(
    spec: FitSpec, level: int, index: Index, tile_blocks: Index
) -> tuple[np.ndarray, np.ndarray]:
    """Task: a tile's block energies and counts (for the level's pruning threshold)."""
    return _work(spec).energies(level, index, tile_blocks)


def tile_task(
    spec: FitSpec, level: int, index: Index, tile_blocks: Index, threshold: float
) -> TileDone:
    """Task: train a tile and write it to the store; returns its summary."""
    done = None
    for item in _work(spec).train(level, index, tile_blocks, threshold):
        if isinstance(item, TileDone):
            done = item
    assert done is not None
    return done


class ClusterRunner:
    """Trains the tiles of each level as tasks on a dask.distributed cluster.

    Parameters
    ----------
    client : distributed.Client
        The cluster's client.
    store_path : str
        The model store (on a file system every worker sees).
    source : ZarrTargets
        The fit's targets (prepared by the engine before the first level).
    device : str
        Device every worker trains on (``"auto"``: its own GPU when it has one).
    memory_budget : int
        Bytes for a tile's training tensors.
    """

    def __init__(
        self, client: Any, store_path: str, source: ZarrTargets, device: str, memory_budget: int
    ) -> None:
        self.client = client
        self.spec = FitSpec(store_path, source, device, memory_budget)
        self._scattered: Any = None

    def _future(self) -> Any:
        """The spec, sent to every worker once (after the engine prepared the targets)."""
        if self._scattered is None:
            [self._scattered] = self.client.scatter([self.spec], broadcast=True, hash=False)
        return self._scattered

    def _keys(self, prefix: str, level: int, tiles: Sequence[Index]) -> list[str]:
        from dask.base import tokenize

        token = tokenize(self.spec.store_path, self.spec.device, self.spec.memory_budget)
        return [f"{prefix}-{token}-{level}-{'.'.join(map(str, index))}" for index in tiles]

    def energies(
        self, level: int, tiles: Sequence[Index], tile_blocks: Index
    ) -> Iterator[tuple[Index, tuple[np.ndarray, np.ndarray]]]:
        """Every tile's block energies, computed on the cluster."""
        n = len(tiles)
        futures = self.client.map(
            energy_task, [self._future()] * n, [level] * n, list(tiles), [tile_blocks] * n,
            key=self._keys("miner-energy", level, tiles),
        )  # fmt: skip
        yield from zip(tiles, self.client.gather(futures), strict=True)

    def train(
        self,
        level: int,
        tiles: Sequence[Index],
        tile_blocks: Index,
        threshold: float,
        clock: Callable[[], float],
    ) -> Iterator[tuple[Index, TileDone]]:
        """Train ``tiles`` on the cluster; yields ``(index, TileDone)`` as tiles finish.

        Closing the iterator cancels the tiles not yet trained.
        """
        from distributed import as_completed

        n = len(tiles)
        futures = self.client.map(
            tile_task, [self._future()] * n, [level] * n, list(tiles), [tile_blocks] * n,
            [threshold] * n, key=self._keys("miner-tile", level, tiles),
        )  # fmt: skip
        index_of = {future.key: index for future, index in zip(futures, tiles, strict=True)}
        try:
            for future in as_completed(futures):
                yield index_of[future.key], future.result()
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def running(self) -> Running | None:
        """Tiles run elsewhere: no snapshot of a running tile."""
        return None
