"""A bounded, thread-safe cache of decoded estimate tiles, each computed once.

Decoding a region of a level needs the coarser level's estimate under it (plus a one-pixel halo),
and neighbouring regions share most of it. :class:`EstimateCache` keeps those coarser estimates as
tiles keyed by the model's fingerprint (so a changed model never reuses a stale tile), the device,
the level and the tile index, drops the least recently used tiles beyond a byte budget, and makes
threads that ask for a tile another thread is computing wait for that result instead of computing
it again (napari decodes several chunks at once).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["DEFAULT_CACHE_BYTES", "EstimateCache", "shared_cache"]

DEFAULT_CACHE_BYTES = 512 * 2**20
"""Byte budget of the process-wide cache of :func:`shared_cache`."""


class EstimateCache:
    """Least-recently-used tiles under a byte budget; each key is computed once at a time.

    Parameters
    ----------
    max_bytes : int
        Tiles beyond this many bytes are dropped, least recently used first (one tile is
        always kept, however large).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._tiles: OrderedDict[Hashable, Any] = OrderedDict()
        self._pending: dict[Hashable, threading.Event] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._tiles)

    @property
    def nbytes(self) -> int:
        """Bytes of the tiles held."""
        return self._bytes

    def clear(self) -> None:
        """Drop every tile (and reset the hit and miss counts)."""
        with self._lock:
            self._tiles.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The tile of ``key``, from the cache or from ``compute()`` (then kept).

        A tile is anything with ``nbytes`` (a tensor, or a tile that fills itself).

        A thread asking for a key that another thread is computing waits for that result.
        """
        while True:
            with self._lock:
                tile = self._tiles.get(key)
                if tile is not None:
                    self._tiles.move_to_end(key)
                    self.hits += 1
                    return tile
                pending = self._pending.get(key)
                if pending is None:
                    self._pending[key] = threading.Event()
                    self.misses += 1
                    break
            pending.wait()  # computed by another thread: look again (it may have failed)
        try:
            tile = compute()
            self._keep(key, tile)
        finally:
            with self._lock:
                self._pending.pop(key).set()
        return tile

    def _keep(self, key: Hashable, tile: Any) -> None:
        size = int(tile.nbytes)
        with self._lock:
            self._tiles[key] = tile
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._tiles) > 1:
                _, old = self._tiles.popitem(last=False)
                self._bytes -= int(old.nbytes)


_SHARED = EstimateCache()


def shared_cache() -> EstimateCache:
    """The process-wide cache that models decode through unless given another."""
    return _SHARED
