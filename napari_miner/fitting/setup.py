"""Assembling the fit engine for an in-memory or an out-of-core (optionally distributed) fit."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..core.config import MinerConfig
from ..core.layout import InputLayout
from .engine import FitEngine, Stopwatch
from .plan import plan_tiles, whole_levels
from .runners import LocalRunner
from .sinks import MemorySink, StoreSink, open_fit_store
from .sources import MemoryTargets, ZarrTargets
from .work import TileWork

__all__ = ["in_memory", "out_of_core"]


def in_memory(
    signal: torch.Tensor,
    layout: InputLayout,
    config: MinerConfig,
    device: torch.device,
    provenance: dict[str, Any],
) -> FitEngine:
    """An in-memory fit of the normalised ``(C, *spatial)`` ``signal``: one tile per level."""
    config.check_shape(layout.spatial_shape)
    source = MemoryTargets(signal, config.n_levels, device)
    sink = MemorySink(layout, config, provenance)
    work = TileWork(config, layout, source, sink, device, memory_budget=None)
    plan = whole_levels(layout.spatial_shape, config)
    return FitEngine(
        config, layout, plan, source, sink, LocalRunner(work), Stopwatch(device), provenance
    )


def out_of_core(
    array: Any,
    layout: InputLayout,
    digest: str,
    config: MinerConfig,
    device: torch.device,
    store: str | os.PathLike[str],
    memory_budget: int,
    provenance: dict[str, Any],
    overwrite: bool = False,
    tile_blocks: int | None = None,
    client: Any = None,
    worker_device: str = "auto",
) -> FitEngine:
    """An out-of-core fit of the lazily read ``array`` into the model ``store``, tile by tile.

    Resumes an unfinished fit of the same input and settings in ``store``; with ``client`` (a
    dask.distributed client) the tiles of each level run as tasks on its workers, each training
    on ``worker_device``.
    """
    config.check_shape(layout.spatial_shape)
    plan = plan_tiles(
        layout.spatial_shape, config, layout.n_channels, memory_budget, device.type, tile_blocks
    )
    input_info = {"shape": list(layout.shape), "dtype": layout.dtype, "digest": digest}
    model_store, lock = open_fit_store(
        store, layout, config, plan, input_info, provenance, overwrite
    )
    sink = StoreSink(model_store, lock)
    source = ZarrTargets(array, layout, digest, config.block_size, plan, model_store.path)
    if client is None:
        work = TileWork(config, layout, source, sink.writer, device, memory_budget, release=True)
        runner: Any = LocalRunner(work)
    else:
        from .distributed import ClusterRunner

        runner = ClusterRunner(client, str(model_store.path), source, worker_device, memory_budget)
    clock = Stopwatch(device, sink.spent_s)
    return FitEngine(config, layout, plan, source, sink, runner, clock, provenance)
