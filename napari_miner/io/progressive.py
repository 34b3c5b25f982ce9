"""A pyramid for viewers that never waits: chunks are decoded in the background, visible ones first.

:class:`ProgressivePyramid` gives one array-like per level (the model's levels, then coarser
overview levels down to ``min_side``, the shapes of :func:`~napari_miner.io.lazy.dask_pyramid`).
Indexing one returns at once: the chunks already decoded, and for the others a stand-in (the
nearest coarser level decoded there, enlarged, else zeros), while a background thread
decodes the missing chunks. The chunks of the latest request come first, then their neighbours and
the chunks of the next coarser level under them (prefetch); requests that are no longer on screen
are dropped. Decoded chunks are kept in a bounded least-recently-used cache, emptied when the
model changes (its fingerprint). ``on_ready`` is called (from the background thread) when a chunk
of the latest request is ready, so that a viewer can redraw: the napari reader connects it to
``layer.refresh`` on the main thread. A chunk that fails to decode (a damaged store tile) keeps
its stand-in and is not tried again until the model changes; its error is added to ``errors``
and ``on_ready`` is called, so that the viewer can report it.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from ..core.fingerprint import model_fingerprint
from ..core.layout import cast_values
from ..core.pyramid import area_downsample_array
from .lazy import LevelArray, overview_shapes

if TYPE_CHECKING:
    from ..core.model import PyramidModel

__all__ = ["DEFAULT_CHUNK_CACHE_BYTES", "ProgressivePyramid"]

DEFAULT_CHUNK_CACHE_BYTES = 512 * 2**20
"""Bytes of decoded chunks a :class:`ProgressivePyramid` keeps by default."""

ChunkKey = tuple[int, tuple[int, ...]]
"""``(level, chunk index per spatial axis)``."""


class ProgressivePyramid:
    """Array-likes of every level whose chunks are decoded in a background thread.

    Parameters
    ----------
    model : PyramidModel
        The model to show.
    chunk_side : int, optional
        In-plane side of a chunk, in pixels (default: 256, rounded to whole blocks); a volume's
        chunks are one block deep.
    cache_bytes : int
        Bytes of decoded chunks to keep (least recently used ones are dropped first).
    min_side : int
        Coarser overview levels are appended until the smallest side is at most this.
    on_ready : callable, optional
        Called with no argument, from the background thread, when a chunk of the latest request
        has been decoded.
    """

    def __init__(
        self,
        model: PyramidModel,
        chunk_side: int | None = None,
        cache_bytes: int = DEFAULT_CHUNK_CACHE_BYTES,
        min_side: int = 512,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.on_ready = on_ready
        block = model.config.block_size
        side = max(block, (chunk_side or 256) // block * block)
        n_spatial = len(model.layout.spatial_shape)
        self.chunk = tuple([block] * (n_spatial - 2) + [side, side])
        self.channel_axis = model.layout.channel_axis
        self.shapes = [model.level_shape(j) for j in range(model.n_levels)]
        self.shapes += overview_shapes(self.shapes[-1], min_side)
        self.levels = [
            LevelArray(self.decoded_shape(j), model.dtype, self.channel_axis, self._reader(j))
            for j in range(len(self.shapes))
        ]
        self._cache: OrderedDict[ChunkKey, np.ndarray] = OrderedDict()
        self._cache_bytes, self._cached = int(cache_bytes), 0
        self._fingerprint: str | None = None  # hashed in the background thread, first
        self._queue: list[ChunkKey] = []
        self._visible: set[ChunkKey] = set()
        self._busy: ChunkKey | None = None
        self._failed: set[ChunkKey] = set()  # not tried again until the model changes
        self._closed = False
        self._wake = threading.Condition()
        self.last_complete = True
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="miner-chunks", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------- geometry
    @property
    def n_model_levels(self) -> int:
        """Levels decoded from the model (the others are overviews of the coarsest one)."""
        return self.model.n_levels

    def decoded_shape(self, level: int) -> tuple[int, ...]:
        """Array shape of ``level``: its spatial shape with the input's channel axis."""
        return tuple(self._with_channels(list(self.shapes[level])))

    @property
    def dtype(self) -> np.dtype:
        """The input's dtype."""
        return self.model.dtype

    def _chunk_side(self, level: int) -> tuple[int, ...]:
        if level >= self.n_model_levels:  # an overview level is one chunk
            return tuple(self.shapes[level])
        return self.chunk

    def _chunks(self, level: int, region: list[slice]) -> list[tuple[int, ...]]:
        side = self._chunk_side(level)
        ranges = [
            range(r.start // s, (r.stop - 1) // s + 1) for r, s in zip(region, side, strict=True)
        ]
        return list(itertools.product(*ranges))

    def _bounds(self, key: ChunkKey) -> list[slice]:
        level, index = key
        side = self._chunk_side(level)
        shape = self.shapes[level]
        return [
            slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(index, side, shape, strict=True)
        ]

    # ------------------------------------------------------------------------------ reading
    def read(self, level: int, region: list[slice]) -> np.ndarray:
        """The decoded values of ``level`` over ``region`` (one slice per spatial axis), at once.

        Chunks not decoded yet are stood in for (see the module docstring) and queued; the
        chunks of this request replace whatever was queued before.
        """
        self._check_model()
        keys = [(level, index) for index in self._chunks(level, region)]
        out = np.zeros(self._with_channels([r.stop - r.start for r in region]), self.dtype)
        missing = []
        for key in keys:
            values = self._cached_chunk(key)
            if values is None:
                missing.append(key)
                values = self._stand_in(key)
                if values is None:
                    continue
            self._copy(out, region, self._bounds(key), values)
        self.last_complete = not missing
        self._schedule(keys, missing, self._prefetch(level, keys, region))
        return out

    def _copy(
        self, out: np.ndarray, region: list[slice], bounds: list[slice], values: np.ndarray
    ) -> None:
        """Copy the part of a chunk (over ``bounds``) that lies in ``region`` into ``out``."""
        src, dst = [], []
        for r, b in zip(region, bounds, strict=True):
            lo, hi = max(r.start, b.start), min(r.stop, b.stop)
            src.append(slice(lo - b.start, hi - b.start))
            dst.append(slice(lo - r.start, hi - r.start))
        if self.channel_axis is not None:
            src.insert(self.channel_axis, slice(None))
            dst.insert(self.channel_axis, slice(None))
        out[tuple(dst)] = values[tuple(src)]

    def _stand_in(self, key: ChunkKey) -> np.ndarray | None:
        """The nearest coarser level decoded under a chunk, enlarged (``None`` if there is none)."""
        level, _ = key
        bounds = self._bounds(key)
        for coarser in range(level + 1, len(self.shapes)):
            factor = 2 ** (coarser - level)
            parent = [slice(b.start // factor, -(-b.stop // factor)) for b in bounds]
            keys = [(coarser, index) for index in self._chunks(coarser, parent)]
            pieces = [(k, self._cached_chunk(k, touch=False)) for k in keys]
            if any(values is None for _, values in pieces):
                continue
            spans = [p.stop - p.start for p in parent]
            coarse = np.zeros(self._with_channels(spans), self.dtype)
            for k, values in pieces:
                self._copy(coarse, parent, self._bounds(k), values)
            for axis in self._spatial_axes():
                coarse = np.repeat(coarse, factor, axis=axis)
            crop = [
                slice(b.start - factor * p.start, b.stop - factor * p.start)
                for b, p in zip(bounds, parent, strict=True)
            ]
            if self.channel_axis is not None:
                crop.insert(self.channel_axis, slice(None))
            return coarse[tuple(crop)]
        return None

    def _spatial_axes(self) -> list[int]:
        ndim = len(self.shapes[0]) + (self.channel_axis is not None)
        return [a for a in range(ndim) if a != self.channel_axis]

    def _with_channels(self, spatial: list[int]) -> list[int]:
        shape = list(spatial)
        if self.channel_axis is not None:
            shape.insert(self.channel_axis, self.model.layout.n_channels)
        return shape

    def _prefetch(self, level: int, keys: list[ChunkKey], region: list[slice]) -> list[ChunkKey]:
        """Neighbours of the requested chunks, then the next coarser level's chunks under them."""
        grid = [
            math.ceil(n / s)
            for n, s in zip(self.shapes[level], self._chunk_side(level), strict=True)
        ]
        ring: dict[ChunkKey, None] = {}
        requested = set(keys)
        for _, index in keys:
            for step in itertools.product((-1, 0, 1), repeat=len(index)):
                near = tuple(i + d for i, d in zip(index, step, strict=True))
                if all(0 <= i < g for i, g in zip(near, grid, strict=True)):
                    if (level, near) not in requested:
                        ring[(level, near)] = None
        coarser: list[ChunkKey] = []
        if level + 1 < len(self.shapes):
            parent = [slice(r.start // 2, -(-r.stop // 2)) for r in region]
            coarser = [(level + 1, index) for index in self._chunks(level + 1, parent)]
        return list(ring) + coarser

    # ------------------------------------------------------------------------------- cache
    def _check_model(self) -> None:
        if self._fingerprint is None:  # not known yet: nothing is decoded yet either
            return
        fingerprint = model_fingerprint(self.model)  # cached while the model is unchanged
        if fingerprint != self._fingerprint:  # the model changed: nothing decoded is valid
            with self._wake:
                self._cache.clear()
                self._failed.clear()
                self._cached = 0
                self._fingerprint = fingerprint

    def _cached_chunk(self, key: ChunkKey, touch: bool = True) -> np.ndarray | None:
        with self._wake:
            values = self._cache.get(key)
            if values is not None and touch:
                self._cache.move_to_end(key)
            return values

    def _keep(self, key: ChunkKey, values: np.ndarray, fingerprint: str | None) -> None:
        with self._wake:
            if fingerprint != self._fingerprint:
                return
            self._cache[key] = values
            self._cached += values.nbytes
            # drop the least recently used chunks, but never one of the view being shown
            for old in [k for k in self._cache if k not in self._visible]:
                if self._cached <= self._cache_bytes:
                    break
                self._cached -= self._cache.pop(old).nbytes

    # -------------------------------------------------------------------------- background
    def _schedule(
        self, view: list[ChunkKey], missing: list[ChunkKey], prefetch: Iterable[ChunkKey]
    ) -> None:
        """Queue the ``missing`` chunks of the ``view``, then ``prefetch``; forget older queues."""
        with self._wake:
            self._visible = set(view)
            queue = list(missing)
            queue += [k for k in prefetch if k not in self._cache and k not in self._visible]
            self._queue = [k for k in queue if k not in self._failed]
            self._wake.notify_all()

    def pending(self) -> int:
        """Chunks of the latest request not decoded yet (queued or being decoded; not failed)."""
        with self._wake:
            return sum(1 for k in self._visible if k not in self._cache and k not in self._failed)

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being decoded; whether that happened in time."""
        with self._wake:
            return self._wake.wait_for(
                lambda: self._closed or (not self._queue and self._busy is None), timeout
            )

    def close(self) -> None:
        """Stop the background thread (chunks being decoded are finished first)."""
        with self._wake:
            self._closed = True
            self._queue = []
            self._wake.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        fingerprint = model_fingerprint(self.model)  # hashing a large in-memory model takes a while
        with self._wake:
            if self._fingerprint is None:
                self._fingerprint = fingerprint
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed or self._queue)
                if self._closed:
                    return
                key = self._queue.pop(0)
                if key in self._cache:
                    continue
                self._busy = key
                fingerprint = self._fingerprint
            try:
                self._keep(key, self._decode(key), fingerprint)
            except Exception as error:  # noqa: BLE001 - kept for the viewer to report
                with self._wake:
                    self._failed.add(key)
                    self.errors.append(error)
            finally:
                with self._wake:
                    self._busy = None
                    visible = key in self._visible
                    self._wake.notify_all()
            if visible and self.on_ready is not None:
                self.on_ready()

    def _decode(self, key: ChunkKey) -> np.ndarray:
        level, _ = key
        if level < self.n_model_levels:
            return self.model.decode(level, region=tuple(self._bounds(key)))
        if level - 1 < self.n_model_levels:  # the first overview: of the coarsest model level
            finer = self.model.decode(level - 1)
        else:
            whole = (level - 1, (0,) * len(self.shapes[level - 1]))
            cached = self._cached_chunk(whole)
            finer = cached if cached is not None else self._decode(whole)
        return cast_values(area_downsample_array(finer, self._spatial_axes()), self.dtype)

    def _reader(self, level: int) -> Callable[[tuple[slice, ...]], np.ndarray]:
        return lambda region: self.read(level, list(region))
