"""Tiles of an out-of-core fit as tasks on a dask.distributed cluster.

The tiles of a level are independent: each reads its target region and the finished coarser levels
from shared storage, trains, and writes its own chunks of the model store. So a level maps onto a
cluster as one task per tile. The scheduler retries the tasks of a lost worker; as every tile draws its
initial weights from its own seed and writes to its own chunk files (its record last), a retried tile
writes exactly what the lost attempt would have, and no tile is lost or counted twice.

Every worker needs the store's directory and the input on a shared file system. Each worker trains on
the device named by the fit (``"auto"``: its own GPU when it has one, e.g. with dask-cuda's
``LocalCUDACluster``, which gives every worker one GPU).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .tiled_fit import TileJob

__all__ = ["FitSpec", "distributed_energies", "distributed_tiles", "scatter_spec"]

_JOBS: dict[FitSpec, TileJob] = {}
_JOBS_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class FitSpec:
    """What a worker needs to train tiles of a fit: the store, the level targets, device, budget.

    Scattered once to every worker (:func:`scatter_spec`); each worker opens one :class:`TileJob`
    per spec (compared by identity) and reuses it for all its tasks.
    """

    store_path: str
    targets: Sequence[Any]
    device: str
    memory_budget: int


def _worker_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _job(spec: FitSpec) -> TileJob:
    """The job of the current process for ``spec`` (opened once, reused by every task of the fit)."""
    with _JOBS_LOCK:
        job = _JOBS.get(spec)
        if job is None:
            for old in [s for s in _JOBS if s.store_path == spec.store_path]:
                del _JOBS[old]
            try:
                from distributed import get_worker

                torch.set_num_threads(max(1, get_worker().state.nthreads))
            except (ImportError, ValueError):
                pass
            job = TileJob(
                spec.store_path, list(spec.targets), _worker_device(spec.device), spec.memory_budget
            )
            _JOBS[spec] = job
        return job


def energy_task(spec: FitSpec, level: int, index: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Task: a tile's block energies and counts (for the level's pruning threshold)."""
    return _job(spec).energies(level, index)


def tile_task(
    spec: FitSpec, level: int, index: tuple[int, ...], threshold: float
) -> dict[str, Any]:
    """Task: train a tile and write it to the store; returns its record (statistics and mask)."""
    record: dict[str, Any] = {}
    for item in _job(spec).run(level, index, threshold):
        if isinstance(item, dict):
            record = item
    return record


def _keys(prefix: str, spec: FitSpec, level: int, tiles: Sequence[tuple[int, ...]]) -> list[str]:
    from dask.base import tokenize

    token = tokenize(spec.store_path, spec.device, spec.memory_budget)
    return [f"{prefix}-{token}-{level}-{'.'.join(map(str, index))}" for index in tiles]


def distributed_energies(
    client: Any, spec: FitSpec, scattered: Any, level: int, tiles: Sequence[tuple[int, ...]]
) -> dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]:
    """Block energies of ``tiles`` of ``level``, computed on the cluster.

    ``scattered`` is the future of ``spec`` on the workers (see :func:`scatter_spec`).
    """
    futures = client.map(
        energy_task, [scattered] * len(tiles), [level] * len(tiles), list(tiles),
        key=_keys("miner-energy", spec, level, tiles),
    )  # fmt: skip
    results = client.gather(futures)
    return dict(zip(tiles, results, strict=True))


def distributed_tiles(
    client: Any,
    spec: FitSpec,
    scattered: Any,
    level: int,
    tiles: Sequence[tuple[int, ...]],
    threshold: float,
) -> Iterator[tuple[tuple[int, ...], dict[str, Any]]]:
    """Train ``tiles`` of ``level`` on the cluster; yields ``(index, record)`` as tiles finish.

    ``scattered`` is the future of ``spec`` on the workers. Closing the iterator cancels the
    tiles not yet trained.
    """
    from distributed import as_completed

    futures = client.map(
        tile_task, [scattered] * len(tiles), [level] * len(tiles), list(tiles),
        [threshold] * len(tiles), key=_keys("miner-tile", spec, level, tiles),
    )  # fmt: skip
    index_of = {future.key: index for future, index in zip(futures, tiles, strict=True)}
    try:
        for future in as_completed(futures):
            yield index_of[future.key], future.result()
    finally:
        client.cancel([f for f in futures if not f.done()])


def scatter_spec(client: Any, spec: FitSpec) -> Any:
    """Send ``spec`` to every worker once; returns the future to pass to the tasks."""
    [future] = client.scatter([spec], broadcast=True, hash=False)
    return future
