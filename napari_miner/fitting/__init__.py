"""Fit orchestration: one coarse-to-fine engine over tiles, with plugged-in targets, sinks, runners.

* :mod:`~napari_miner.fitting.engine` — :class:`FitEngine`, the coarse-to-fine loop over levels and tiles;
* :mod:`~napari_miner.fitting.sources` — where targets come from (memory, or zarr and a work directory);
* :mod:`~napari_miner.fitting.sinks` — where results go (in-memory levels, or a model store);
* :mod:`~napari_miner.fitting.runners`, :mod:`~napari_miner.fitting.distributed` — what trains the tiles
  (this process, or a dask.distributed cluster);
* :mod:`~napari_miner.fitting.work` — the work on one tile, the same everywhere;
* :mod:`~napari_miner.fitting.plan` — tile sizes from a memory budget;
* :mod:`~napari_miner.fitting.progress` — the Qt-free progress model every front end reads;
* :mod:`~napari_miner.fitting.setup` — the engine assembled for an in-memory or out-of-core fit.
"""

from .engine import FitEngine
from .progress import FitProgress
from .setup import in_memory, out_of_core

__all__ = ["FitEngine", "FitProgress", "in_memory", "out_of_core"]
