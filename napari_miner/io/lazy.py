"""Lazy multiscale views of a fitted model: dask arrays whose chunks are decoded on demand.

:func:`dask_pyramid` turns a :class:`~napari_miner.core.model.PyramidModel` into one dask array per
pyramid level (the shapes napari expects of a multiscale image). Nothing is decoded until a chunk is
computed, and then only the blocks under that chunk (plus the coarser blocks beneath them) are
evaluated. Coarser levels, area-downsampled from the model's coarsest level, are appended so that the
smallest level is small enough for an overview.

Dask array names are derived from a fingerprint of the model (every weight, bias and block index,
the layout and the config), so two different models never share task keys (napari's dask cache
would otherwise show stale tiles), and the same model always gives the same names.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.fingerprint import model_fingerprint
from ..core.layout import cast_values
from ..core.pyramid import area_downsample_array

if TYPE_CHECKING:
    import dask.array

    from napari_miner.core.model import PyramidModel

__all__ = ["LevelArray", "dask_pyramid", "model_fingerprint", "overview_shapes"]


class LevelArray:
    """Array-like view of one level: indexing reads just the indexed region.

    Parameters
    ----------
    shape : tuple of int
        Array shape (spatial axes and, at ``channel_axis``, the channels).
    dtype : numpy.dtype
        Dtype of the values.
    channel_axis : int or None
        The channel axis, always read whole.
    read : callable
        ``read(region)`` returns the values over ``region`` (one slice per spatial axis).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: np.dtype,
        channel_axis: int | None,
        read: Callable[[tuple[slice, ...]], np.ndarray],
    ) -> None:
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.size = math.prod(self.shape)
        self.channel_axis = channel_axis
        self._read = read

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        values = self[...]
        return values if dtype is None else values.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        region: list[slice] = []  # bounding box, per spatial axis
        local: list[Any] = []  # the key relative to the decoded box, per axis
        for axis, (k, size) in enumerate(zip(key, self.shape, strict=True)):
            if isinstance(k, slice):
                start, stop, step = k.indices(size)
                indices = range(start, stop, step)
                if len(indices) == 0:
                    return np.empty(self._result_shape(key), dtype=self.dtype)
                lo, hi = min(indices[0], indices[-1]), max(indices[0], indices[-1]) + 1
            elif isinstance(k, int | np.integer):
                index = int(k) + size if k < 0 else int(k)
                if not 0 <= index < size:
                    raise IndexError(f"index {k} is out of bounds for axis {axis} of size {size}")
                lo, hi = index, index + 1
            else:
                raise TypeError(f"unsupported index {k!r}: use integers and slices")
            if axis == self.channel_axis:
                local.append(k)
                continue
            region.append(slice(lo, hi))
            if isinstance(k, slice):  # same elements, counted from the box's start
                rel_stop = stop - lo
                local.append(slice(start - lo, rel_stop if rel_stop >= 0 else None, step))
            else:
                local.append(0)
        decoded = self._read(tuple(region))
        return decoded[tuple(local)]

    def _result_shape(self, key: tuple) -> tuple[int, ...]:
        return tuple(
            len(range(*k.indices(size)))
            for k, size in zip(key, self.shape, strict=True)
            if isinstance(k, slice)
        )


def _spatial_axes(model: PyramidModel) -> list[int]:
    ndim = len(model.decoded_shape(0))
    return [a for a in range(ndim) if a != model.layout.channel_axis]


def _downsample_block(block: np.ndarray, spatial_axes: Sequence[int], out_dtype: str) -> np.ndarray:
    """2× area average of a chunk along the spatial axes, in the model's dtype."""
    return cast_values(area_downsample_array(block, spatial_axes), np.dtype(out_dtype))


def _chunk_sides(model: PyramidModel, chunk_blocks: int | Sequence[int]) -> list[int]:
    n_spatial = len(model.layout.spatial_shape)
    if isinstance(chunk_blocks, int | np.integer):
        # a volume is browsed plane by plane: one block deep, so that showing a plane decodes a
        # slab one block thick rather than a cube chunk_blocks blocks deep
        per_axis = [1] * (n_spatial - 2) + [int(chunk_blocks)] * 2
    else:
        per_axis = [int(c) for c in chunk_blocks]
        if len(per_axis) != n_spatial:
            raise ValueError(
                f"chunk_blocks needs one entry per spatial axis ({n_spatial}), got {chunk_blocks!r}"
            )
    if any(c < 1 for c in per_axis):
        raise ValueError(f"chunk_blocks must be positive, got {chunk_blocks!r}")
    return [c * model.config.block_size for c in per_axis]


def dask_pyramid(
    model: PyramidModel, chunk_blocks: int | Sequence[int] = 16, min_side: int = 512
) -> list[dask.array.Array]:
    """Lazy dask arrays of every level of ``model``, level 0 (full resolution) first.

    Parameters
    ----------
    model : PyramidModel
        The fitted model.
    chunk_blocks : int or sequence of int
        Blocks per chunk along each spatial axis, or one number for the two in-plane (last)
        spatial axes; a volume's leading spatial axis then gets one block per chunk, so that
        showing one plane decodes a slab one block thick. Chunks hold whole blocks, the channel
        axis stays in one chunk.
    min_side : int
        Coarser levels (2× area averages of the model's coarsest level) are appended until the
        smallest spatial side is at most this; none if the coarsest model level already is.

    Returns
    -------
    list of dask.array.Array
        Level ``j`` has shape ``model.decoded_shape(j)`` and the input's dtype; computing a chunk
        calls ``model.decode(j, region=<that chunk>)``. The appended levels have spatial sides
        ``ceil(side / 2)`` of the level before.
    """
    import dask.array as da
    from dask.base import tokenize

    fingerprint = model_fingerprint(model)
    spatial_axes = _spatial_axes(model)
    sides = _chunk_sides(model, chunk_blocks)
    dtype = model.dtype

    levels: list[da.Array] = []
    for j in range(model.n_levels):
        source = LevelArray(
            model.decoded_shape(j), dtype, model.layout.channel_axis,
            functools.partial(model.decode, j),
        )  # fmt: skip
        chunks = list(source.shape)  # the channel axis in one chunk
        for axis, side in zip(spatial_axes, sides, strict=True):
            chunks[axis] = side
        chunks = da.core.normalize_chunks(tuple(chunks), source.shape, dtype=dtype)
        name = f"miner-level{j}-" + tokenize(fingerprint, j, chunks)
        levels.append(
            da.from_array(
                source,
                chunks=chunks,
                name=name,
                asarray=True,
                fancy=False,
                meta=np.empty((0,) * source.ndim, dtype=dtype),
            )
        )

    while min(levels[-1].shape[a] for a in spatial_axes) > min_side:
        previous = levels[-1]
        merged = {a: 2 * side for a, side in zip(spatial_axes, sides, strict=True)}
        source = previous.rechunk(merged)
        out_chunks = tuple(
            tuple(math.ceil(c / 2) for c in cs) if axis in merged else cs
            for axis, cs in enumerate(source.chunks)
        )
        j = len(levels)
        levels.append(
            da.map_blocks(
                _downsample_block,
                source,
                spatial_axes=tuple(spatial_axes),
                out_dtype=dtype.str,
                dtype=dtype,
                chunks=out_chunks,
                name=f"miner-level{j}-" + tokenize(fingerprint, "area", j, out_chunks),
                meta=np.empty((0,) * source.ndim, dtype=dtype),
            )
        )
    return levels


def overview_shapes(shape: Sequence[int], min_side: int) -> list[tuple[int, ...]]:
    """Spatial shapes of the overview levels under ``shape``: halved until a side is ``min_side``.

    The rule of :func:`dask_pyramid`'s appended levels (``ceil(side / 2)`` each time, none if the
    smallest side of ``shape`` already is at most ``min_side``).
    """
    shapes: list[tuple[int, ...]] = []
    current = tuple(int(s) for s in shape)
    while min(current) > min_side:
        current = tuple(math.ceil(s / 2) for s in current)
        shapes.append(current)
    return shapes
