"""Out-of-core pyramid targets: the image every pyramid level is trained to reproduce.

Level 0's target is the normalised input (:func:`normalized`, lazy: it is computed from the input
chunk by chunk when a region is read). Level ``j >= 1``'s target is level ``j - 1`` area-downsampled
(odd sides edge-padded by one, then the 2×2 or 2×2×2 box mean), exactly as
:func:`napari_miner.core.pyramid.gaussian_targets` computes it in memory; :func:`build_targets`
writes these levels to disk once, chunk by chunk, each from the stored level below it, so memory
stays bounded by a few chunks whatever the input's size. :func:`read_region` reads any level's
region as a float32 array.

On-disk layout (zarr format 2)::

    {directory}/targets/            zarr group
        {j}/                        float32 array (C, *level_j shape), j = 1 .. n_levels - 1,
                                    chunks (C, chunk, chunk[, chunk]), Blosc-lz4 compressed;
                                    attributes "complete" (bool) and "build" (what it was built
                                    from: fingerprint, input layout, level, shape, chunk)

A level's ``complete`` attribute is set to ``true`` only after all of its data is written, so an
interrupted build is detected and that level (and every level above it) rebuilt on the next call,
while completed levels built from the same input (same ``fingerprint`` and layout) and chunking are
reused without reading anything. Two processes must not build targets in the same directory at the
same time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import InvalidInputError
from ..core.layout import InputLayout
from ..core.pyramid import area_downsample_array, level_shapes

if TYPE_CHECKING:
    import dask.array

__all__ = ["TargetLevel", "build_targets", "default_chunk", "normalized", "read_region"]

FORMAT_NAME = "napari-miner.targets"
"""Value of ``build["format"]`` in every stored target level's attributes."""

FORMAT_VERSION = 1
"""Version of the on-disk target layout; a stored level of another version is rebuilt."""

_DEFAULT_CHUNK = {2: 1024, 3: 128}


def default_chunk(n_spatial: int) -> int:
    """Default target chunk side: 1024 pixels in 2D, 128 voxels in 3D (4 and 8 MiB per channel)."""
    return _DEFAULT_CHUNK.get(n_spatial, 128)


@dataclass(frozen=True)
class TargetLevel:
    """The target of one pyramid level.

    Attributes
    ----------
    level : int
        Pyramid level (0 = full resolution).
    array : dask.array.Array or zarr.Array
        The float32 ``(C, *spatial)`` target: for level 0 the lazy normalised input (a dask
        array), for levels ``>= 1`` the zarr array stored on disk. Read regions with
        :func:`read_region`, which handles both.
    """

    level: int
    array: Any

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, *spatial)`` shape of the target."""
        return tuple(int(s) for s in self.array.shape)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape of the target (its shape without the channel axis)."""
        return self.shape[1:]

    def to_dask(self) -> dask.array.Array:
        """The target as a lazy dask array (stored levels in their on-disk chunks)."""
        import dask.array as da

        if isinstance(self.array, da.Array):
            return self.array
        return da.from_zarr(self.array)


def normalized(array: Any, layout: InputLayout) -> dask.array.Array:
    """The input mapped, lazily and chunk-wise, to the normalised ``(C, *spatial)`` float32 target.

    The same values as ``layout.normalize(numpy.asarray(array))``: the channel axis moved to the
    front (or a new leading axis of length 1 added), then ``(x - value_min) / value_scale`` in
    float32.

    Parameters
    ----------
    array : dask.array.Array
        The input, in the layout that ``layout`` describes (a NumPy or zarr array is wrapped in
        dask).
    layout : InputLayout
        Layout and value range of the input.

    Returns
    -------
    dask.array.Array
        Lazy float32 array of shape ``(C, *spatial)``, chunked like the input.

    Raises
    ------
    InvalidInputError
        If the array's shape is not the layout's.
    """
    import dask.array as da

    if not isinstance(array, da.Array):
        array = da.asarray(array)
    if tuple(int(s) for s in array.shape) != tuple(layout.shape):
        raise InvalidInputError(
            f"input shape {tuple(array.shape)} does not match its layout's shape {layout.shape}"
        )
    if layout.channel_axis is None:
        array = array[np.newaxis]
    else:
        array = da.moveaxis(array, layout.channel_axis, 0)
    return array.map_blocks(layout.normalize_values, dtype=np.float32)


def _downsample_block(block: np.ndarray) -> np.ndarray:
    """2×2 (2×2×2) area average of a ``(C, *spatial)`` chunk.

    The one rule of :func:`~napari_miner.core.pyramid.area_downsample`: only the array's last
    chunk along an axis can have an odd side, so padding the chunk equals padding the array.
    """
    return area_downsample_array(block, range(1, block.ndim))


def _downsample(source: dask.array.Array, chunk: int) -> dask.array.Array:
    """Lazy area-downsampled ``source``, in chunks of ``chunk`` (the last ones smaller)."""
    source = source.rechunk((source.shape[0],) + (2 * chunk,) * (source.ndim - 1))
    out_chunks = (source.chunks[0],) + tuple(
        tuple(math.ceil(c / 2) for c in axis) for axis in source.chunks[1:]
    )
    return source.map_blocks(_downsample_block, chunks=out_chunks, dtype=np.float32)


def _build_record(
    layout: InputLayout, fingerprint: str, level: int, shape: Sequence[int], chunk: int
) -> dict[str, Any]:
    record = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "layout": layout.to_dict(),
        "level": level,
        "shape": [int(s) for s in shape],
        "chunk": chunk,
    }
    return json.loads(json.dumps(record))  # as it reads back from the attributes


def _is_reusable(group: Any, name: str, record: dict[str, Any]) -> bool:
    import zarr

    try:
        existing = group[name]
    except KeyError:
        return False
    if not isinstance(existing, zarr.Array):
        return False
    try:
        attrs = existing.attrs.asdict()
    except Exception:  # unreadable attributes: rebuild
        return False
    return (
        attrs.get("complete") is True
        and attrs.get("build") == record
        and tuple(existing.shape) == tuple(record["shape"])
        and np.dtype(existing.dtype) == np.float32
    )


def build_targets(
    array: Any,
    layout: InputLayout,
    n_levels: int,
    directory: str | Path,
    *,
    fingerprint: str,
    chunk: int | None = None,
) -> list[TargetLevel]:
    """The targets of pyramid levels ``0 .. n_levels - 1``, levels ``>= 1`` stored on disk.

    Level 0 wraps :func:`normalized` ``(array, layout)``; level ``j >= 1`` is computed chunk by
    chunk from the stored level ``j - 1`` (level 1 from the normalised input) and written to the
    zarr array ``directory/targets/{j}`` (see the module docstring for the layout). A level that
    was completely written before, from the same ``fingerprint``, layout and ``chunk``, is reused
    as it is; an incomplete or different one is rebuilt, and so is every level above a rebuilt
    one. Matches :func:`napari_miner.core.pyramid.gaussian_targets` of the normalised input to
    float32 rounding.

    Parameters
    ----------
    array : dask.array.Array
        The input (e.g. :attr:`~napari_miner.io.source.InputSource.array`).
    layout : InputLayout
        Layout and value range of the input.
    n_levels : int
        Number of pyramid levels (>= 1); level ``j`` has spatial shape ``ceil(shape / 2**j)``.
    directory : str or Path
        Working directory; the targets go to its ``targets`` subdirectory (created if needed).
    fingerprint : str
        Identifies the input's content (e.g. :attr:`~napari_miner.io.scan.InputStats.digest`);
        stored with every level, and stored levels with another fingerprint are rebuilt.
    chunk : int, optional
        Chunk side, in pixels along every spatial axis, of the stored levels (the channel axis
        is never split). Default: :func:`default_chunk` (1024 in 2D, 128 in 3D). Memory use is
        a small multiple of ``C * (2 * chunk) ** ndim * 4`` bytes.

    Returns
    -------
    list of TargetLevel
        One per level, level 0 first.

    Raises
    ------
    InvalidInputError
        If the array's shape is not the layout's.
    ValueError
        If ``n_levels`` or ``chunk`` is not positive.
    """
    import dask.array as da
    import numcodecs
    import zarr
    from zarr.storage import LocalStore

    n_levels = int(n_levels)
    if n_levels < 1:
        raise ValueError(f"n_levels must be at least 1, got {n_levels}")
    n_spatial = len(layout.spatial_shape)
    chunk = default_chunk(n_spatial) if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of pixels, got {chunk}")
    level0 = normalized(array, layout)
    targets = [TargetLevel(0, level0)]
    if n_levels == 1:
        return targets

    location = Path(directory) / "targets"
    location.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(store=LocalStore(str(location)), mode="a", zarr_format=2)
    n_channels = layout.n_channels
    compressor = numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)
    rebuilt = False
    for j, spatial in enumerate(level_shapes(layout.spatial_shape, n_levels)[1:], start=1):
        shape = (n_channels, *spatial)
        record = _build_record(layout, fingerprint, j, shape, chunk)
        name = str(j)
        if not rebuilt and _is_reusable(group, name, record):
            targets.append(TargetLevel(j, group[name]))
            continue
        rebuilt = True
        stored = group.create_array(
            name,
            shape=shape,
            chunks=(n_channels,) + tuple(min(chunk, s) for s in spatial),
            dtype=np.float32,
            fill_value=0.0,
            compressors=compressor,
            overwrite=True,
            attributes={"complete": False, "build": record},
        )
        below = targets[-1].array
        source = below if isinstance(below, da.Array) else da.from_zarr(below)
        # in this thread: torch in dask's worker threads would start OpenMP teams of their own,
        # after which OpenMP stops spinning between parallel regions and training slows ~30 %
        da.store(_downsample(source, chunk), stored, lock=False, scheduler="synchronous")
        # written only once every chunk is on disk: marks the level as reusable
        stored.attrs.update({"complete": True})
        targets.append(TargetLevel(j, stored))
    return targets


def read_region(target: TargetLevel, region: Sequence[slice]) -> np.ndarray:
    """Read a region of a target level.

    Parameters
    ----------
    target : TargetLevel
        Any level returned by :func:`build_targets` (level 0 computes its lazy slice).
    region : sequence of slice
        One slice per spatial axis, in the level's own pixel coordinates (numpy slicing rules:
        bounds past the edge are clipped).

    Returns
    -------
    numpy.ndarray
        Float32 array of shape ``(C, *region shape)``.

    Raises
    ------
    ValueError
        If ``region`` does not have one slice per spatial axis.
    """
    import dask.array as da

    region = tuple(region)
    n_spatial = len(target.shape) - 1
    if len(region) != n_spatial or not all(isinstance(s, slice) for s in region):
        raise ValueError(
            f"region must be {n_spatial} slices (one per spatial axis of level {target.level}), "
            f"got {region!r}"
        )
    index = (slice(None), *region)
    if isinstance(target.array, da.Array):
        values = target.array[index].compute()
    else:
        values = target.array[index]
    return np.ascontiguousarray(values, dtype=np.float32)
