"""One level of a model store, read tile by tile when decoding needs it.

:class:`StoredLevel` is the :class:`~napari_miner.core.model.LevelBank` of a stored level: decoding a
region asks it for the MLPs of the blocks under the region, and it reads (and verifies) only the tiles
those blocks lie in, keeping recently used tiles in a bounded cache. Memory follows the region and the
cache, never the size of the level.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Protocol

import numpy as np
import torch

from ..core.blocks import BlockGrid
from ..core.config import MinerConfig
from ..core.layout import InputLayout
from ..core.mlp_bank import layer_sizes, params_per_mlp, unpack_bank
from ..core.tiles import tile_blocks_region

__all__ = ["StoredLevel", "TileStore"]


class TileStore(Protocol):
    """What a stored level is read from (a current or an older store format)."""

    path: Any
    config: MinerConfig
    layout: InputLayout

    def grid(self, level: int) -> BlockGrid:
        """Block grid of ``level``."""
        ...

    def tile_blocks(self, level: int) -> tuple[int, ...]:
        """Tile shape of ``level``."""
        ...

    def records(self, level: int) -> dict[tuple[int, ...], Any]:
        """Finished tiles of ``level`` (records with ``n_mlps`` and ``digest``)."""
        ...

    def level_stats(self, level: int) -> dict[str, Any]:
        """Statistics of ``level``."""
        ...

    def read_tile(self, level: int, index: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """A verified tile: ``(*tile)`` mask and ``(*tile, P)`` packed MLPs."""
        ...


class StoredLevel:
    """A stored level: a ``LevelBank`` whose tiles are read, verified and cached on demand.

    Parameters
    ----------
    store : TileStore
        The store.
    level : int
        The level.
    cache_bytes : int
        Bytes of tiles kept in memory (least recently used ones are dropped first).
    """

    def __init__(self, store: TileStore, level: int, cache_bytes: int) -> None:
        self.store = store
        self.level = level
        self.grid = store.grid(level)
        self.tile_blocks = store.tile_blocks(level)
        self._records = dict(store.records(level))
        self.stats = store.level_stats(level)
        config, layout = store.config, store.layout
        self._sizes = layer_sizes(
            self.grid.ndim, config.width_at(level), config.hidden_layers, layout.n_channels
        )
        self._per_mlp = params_per_mlp(self._sizes)
        self._cache: OrderedDict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._lock = threading.Lock()

    def fingerprint(self) -> str:
        """Identity of what the level decodes to: the store's path and its tiles' checksums."""
        digest = hashlib.blake2b(digest_size=16)
        for index in sorted(self._records):
            digest.update(repr(index).encode() + self._records[index].digest)
        return f"{self.store.path}:{self.level}:{digest.hexdigest()}"

    @property
    def n_mlps(self) -> int:
        """Blocks that hold an MLP (in finished tiles)."""
        return sum(record.n_mlps for record in self._records.values())

    @property
    def n_parameters(self) -> int:
        """Every weight and bias of the level."""
        return self.n_mlps * self._per_mlp

    def active_mask(self) -> np.ndarray:
        """Boolean mask over the block grid of the blocks with an MLP (finished tiles only)."""
        mask = np.zeros(self.grid.grid_shape, dtype=bool)
        for index in self._records:
            ids, _ = self._tile(index)
            mask.reshape(-1)[ids] = True
        return mask

    def gather(
        self, block_ids: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """MLPs of the given flat block indices (see ``LevelBank.gather``)."""
        ids = block_ids.cpu().numpy().astype(np.int64, copy=False)
        coords = np.unravel_index(ids, self.grid.grid_shape)
        tiles = np.stack([c // t for c, t in zip(coords, self.tile_blocks, strict=True)], axis=1)
        present = np.zeros(ids.shape[0], dtype=bool)
        rows = np.zeros((ids.shape[0], self._per_mlp), dtype=np.float32)
        if ids.size:
            keys, inverse = np.unique(tiles, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            for k, key in enumerate(keys):
                index = tuple(int(i) for i in key)
                if index not in self._records:
                    continue
                tile_ids, tile_params = self._tile(index)
                members = np.nonzero(inverse == k)[0]
                if not tile_ids.size:
                    continue
                at = np.searchsorted(tile_ids, ids[members]).clip(max=tile_ids.size - 1)
                hit = tile_ids[at] == ids[members]
                present[members[hit]] = True
                rows[members[hit]] = tile_params[at[hit]]
        packed = torch.from_numpy(rows[present])
        weights, biases = unpack_bank(packed, self._sizes)
        return (
            torch.from_numpy(present),
            [w.contiguous() for w in weights],
            [b.contiguous() for b in biases],
        )

    def _tile(self, index: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """A finished tile as sorted flat level block ids and their packed MLPs (cached)."""
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        mask, params = self.store.read_tile(self.level, index)
        region = tile_blocks_region(self.grid, self.tile_blocks, index)
        local = np.flatnonzero(mask)
        coords = np.unravel_index(local, mask.shape)
        ids = np.ravel_multi_index(
            tuple(c + r.start for c, r in zip(coords, region, strict=True)), self.grid.grid_shape
        ).astype(np.int64)
        compact = np.ascontiguousarray(params.reshape(-1, self._per_mlp)[local])
        entry = (ids, compact)
        with self._lock:
            self._cache[index] = entry
            self._cached += compact.nbytes + ids.nbytes
            while self._cached > self._cache_bytes and len(self._cache) > 1:
                _, (old_ids, old) = self._cache.popitem(last=False)
                self._cached -= old.nbytes + old_ids.nbytes
        return entry
