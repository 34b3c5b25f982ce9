"""One level of a model store, read tile by tile when decoding needs it.

:class:`StoredLevel` is the :class:`~napari_miner.core.model.LevelBank` of a stored level (its main
bank; its split banks are its ``extra``): decoding a region asks it for the MLPs of the blocks under
the region, and it reads (and verifies) only the tiles those blocks lie in, keeping recently used tiles
in a bounded cache that the level's banks share. Memory follows the region and the cache, never the
size of the level.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Protocol

import numpy as np
import torch

from ..core.config import MinerConfig
from ..core.layout import InputLayout
from ..core.mlp_bank import params_per_mlp, unpack_bank
from ..core.tiles import tile_blocks_region

__all__ = ["StoredLevel", "TileStore"]

BankTile = tuple[np.ndarray, np.ndarray]
"""A tile of one bank: its sorted flat block ids (on the bank's grid) and their packed MLPs."""


class TileStore(Protocol):
    """What a stored level is read from (a current or an older store format)."""

    path: Any
    config: MinerConfig
    layout: InputLayout

    def banks(self, level: int) -> list[Any]:
        """The banks of ``level`` (``name``, ``grid``, ``tile_blocks``, ``sizes``)."""
        ...

    def level_bits(self, level: int) -> int | None:
        """Quantisation of ``level`` (``None``: float weights)."""
        ...

    def records(self, level: int) -> dict[tuple[int, ...], Any]:
        """Finished tiles of ``level`` (records with ``n_mlps``, ``bank_mlps`` and ``digest``)."""
        ...

    def level_stats(self, level: int) -> dict[str, Any]:
        """Statistics of ``level``."""
        ...

    def read_tile(self, level: int, index: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
        """A verified tile: per bank, its ``(*tile)`` mask and ``(*tile, P)`` packed MLPs."""
        ...


class _LevelTiles:
    """The verified tiles of a level, compacted per bank, in a bounded LRU cache."""

    def __init__(self, store: TileStore, level: int, cache_bytes: int) -> None:
        self.store, self.level = store, level
        self.banks = store.banks(level)
        self.records = dict(store.records(level))
        self._cache: OrderedDict[tuple[int, ...], list[BankTile]] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._lock = threading.Lock()

    def tile(self, index: tuple[int, ...]) -> list[BankTile]:
        """A finished tile, per bank as sorted block ids and their packed MLPs (cached)."""
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        entry = []
        for bank, (mask, params) in zip(
            self.banks, self.store.read_tile(self.level, index), strict=True
        ):
            region = tile_blocks_region(bank.grid, bank.tile_blocks, index)
            local = np.flatnonzero(mask)
            coords = np.unravel_index(local, mask.shape)
            ids = np.ravel_multi_index(
                tuple(c + r.start for c, r in zip(coords, region, strict=True)),
                bank.grid.grid_shape,
            ).astype(np.int64)
            width = params_per_mlp(bank.sizes)
            entry.append((ids, np.ascontiguousarray(params.reshape(-1, width)[local])))
        size = sum(ids.nbytes + rows.nbytes for ids, rows in entry)
        with self._lock:
            self._cache[index] = entry
            self._cached += size
            while self._cached > self._cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached -= sum(ids.nbytes + rows.nbytes for ids, rows in old)
        return entry


class StoredLevel:
    """A bank of a stored level, whose tiles are read, verified and cached on demand.

    The main bank (``bank=0``) stands for the level: it has the level's ``stats`` and its split
    banks as ``extra``.

    Parameters
    ----------
    store : TileStore
        The store.
    level : int
        The level.
    cache_bytes : int
        Bytes of tiles kept in memory (least recently used ones are dropped first).
    bank : int
        Which bank of the level.
    tiles : _LevelTiles, optional
        The level's tile cache (shared by its banks).
    """

    def __init__(
        self,
        store: TileStore,
        level: int,
        cache_bytes: int,
        bank: int = 0,
        tiles: _LevelTiles | None = None,
    ) -> None:
        self.store, self.level, self.bank = store, level, bank
        self._tiles = tiles if tiles is not None else _LevelTiles(store, level, cache_bytes)
        header = self._tiles.banks[bank]
        self.grid, self.tile_blocks, self._sizes = header.grid, header.tile_blocks, header.sizes
        self._per_mlp = params_per_mlp(self._sizes)
        self.bits = store.level_bits(level)
        self.stats = store.level_stats(level) if bank == 0 else {}
        self.extra: tuple[StoredLevel, ...] = ()
        if bank == 0:
            self.extra = tuple(
                StoredLevel(store, level, cache_bytes, k, self._tiles)
                for k in range(1, len(self._tiles.banks))
            )

    def fingerprint(self) -> str:
        """Identity of what the level decodes to: the store's path and its tiles' checksums."""
        records = self._tiles.records
        digest = hashlib.blake2b(digest_size=16)
        for index in sorted(records):
            digest.update(repr(index).encode() + records[index].digest)
        return f"{self.store.path}:{self.level}:{self.bank}:{digest.hexdigest()}"

    def _own_mlps(self) -> int:
        records = self._tiles.records.values()
        if self.bank == 0 and not any(record.bank_mlps for record in records):
            return sum(record.n_mlps for record in records)  # one bank, older records
        return sum(record.bank_mlps[self.bank] for record in records if record.bank_mlps)

    @property
    def n_mlps(self) -> int:
        """MLPs of this bank (the main bank: of every bank of the level)."""
        return self._own_mlps() + sum(bank.n_mlps for bank in self.extra)

    @property
    def n_parameters(self) -> int:
        """Weights and biases of this bank (the main bank: of every bank of the level)."""
        return self._own_mlps() * self._per_mlp + sum(bank.n_parameters for bank in self.extra)

    def active_mask(self) -> np.ndarray:
        """Boolean mask over the block grid of the blocks with an MLP in this or a finer bank."""
        from ..core.model import pooled_mask

        mask = np.zeros(self.grid.grid_shape, dtype=bool)
        for index in self._tiles.records:
            ids, _ = self._tiles.tile(index)[self.bank]
            mask.reshape(-1)[ids] = True
        for bank in self.extra:
            mask |= pooled_mask(bank, self.grid)
        return mask

    def gather(
        self, block_ids: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """MLPs of the given flat block indices of this bank (see ``LevelBank.gather``)."""
        ids = block_ids.cpu().numpy().astype(np.int64, copy=False)
        coords = np.unravel_index(ids, self.grid.grid_shape)
        tile_grid = [
            -(-g // t) for g, t in zip(self.grid.grid_shape, self.tile_blocks, strict=True)
        ]
        tiles = np.ravel_multi_index(
            tuple(c // t for c, t in zip(coords, self.tile_blocks, strict=True)), tile_grid
        )
        present = np.zeros(ids.shape[0], dtype=bool)
        found: list[tuple[np.ndarray, np.ndarray]] = []  # (positions in ids, rows), per tile
        for flat in np.unique(tiles):
            index = tuple(int(i) for i in np.unravel_index(flat, tile_grid))
            if index not in self._tiles.records:
                continue
            tile_ids, tile_params = self._tiles.tile(index)[self.bank]
            if not tile_ids.size:
                continue
            members = np.flatnonzero(tiles == flat)
            at = np.searchsorted(tile_ids, ids[members]).clip(max=tile_ids.size - 1)
            hit = tile_ids[at] == ids[members]
            present[members[hit]] = True
            found.append((members[hit], tile_params[at[hit]]))
        rows = np.empty((int(present.sum()), self._per_mlp), dtype=np.float32)
        rank = np.cumsum(present) - 1  # row of each present id, in the order of ids
        for members, params in found:
            rows[rank[members]] = params
        packed = torch.from_numpy(rows)
        weights, biases = unpack_bank(packed, self._sizes)
        return (
            torch.from_numpy(present),
            [w.contiguous() for w in weights],
            [b.contiguous() for b in biases],
        )
