"""One streamed pass over an input: its value range, a check for NaN/infinity, a content digest.

Memory stays bounded by a few chunks, whatever the input's size.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import InvalidInputError

if TYPE_CHECKING:
    import dask.array

__all__ = ["InputStats", "scan_input"]


@dataclass(frozen=True)
class InputStats:
    """What one pass over the input found.

    Attributes
    ----------
    value_min, value_max : float
        Smallest and largest value of the array (``0.0``/``1.0`` for booleans).
    digest : str
        SHA-256 hex digest identifying the array's content. It hashes, in this order: a header
        ``json.dumps({"shape": [...], "dtype": dtype.str, "chunks": [[...], ...]})`` (UTF-8), then
        the raw 32-byte SHA-256 digests of every chunk's C-contiguous bytes (in the array's dtype),
        chunks taken in C order of their chunk index. It is therefore stable across runs and
        machines for the same values, dtype and chunking, but changes if the array is rechunked.
    """

    value_min: float
    value_max: float
    digest: str


def _chunk_stats(block: np.ndarray, index: tuple[int, ...]) -> tuple:
    """Per-chunk (min, max, all finite, sha256 digest, chunk index)."""
    block = np.ascontiguousarray(block)
    digest = hashlib.sha256(memoryview(block).cast("B")).digest()
    finite = True
    if block.dtype.kind == "f":
        finite = bool(np.isfinite(block).all())
    if not finite:
        return (math.nan, math.nan, False, digest, index)
    return (float(block.min()), float(block.max()), True, digest, index)


def _combine(stats: list[tuple], header: bytes) -> tuple:
    outer = hashlib.sha256(header)
    value_min, value_max = math.inf, -math.inf
    bad = None
    for lo, hi, finite, digest, index in stats:  # already in C order of chunk index
        outer.update(digest)
        if not finite:
            bad = bad or index
            continue
        value_min, value_max = min(value_min, lo), max(value_max, hi)
    return value_min, value_max, outer.hexdigest(), bad


def scan_input(array: dask.array.Array) -> InputStats:
    """Find the value range and content digest of ``array`` in one chunk-by-chunk pass.

    Every chunk is read once, in a single dask computation (with the current dask scheduler),
    and reduced to its minimum, maximum, finiteness and SHA-256 digest, so memory stays bounded by
    a few chunks whatever the array's size.

    Parameters
    ----------
    array : dask.array.Array
        The input, e.g. :attr:`InputSource.array`.

    Returns
    -------
    InputStats
        Value range and digest (see :class:`InputStats` for what the digest covers).

    Raises
    ------
    InvalidInputError
        If the array is empty, of a non-numeric dtype, or holds NaN or infinite values.
    """
    import dask
    import dask.array as da

    if not isinstance(array, da.Array):
        array = da.asarray(array)
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "biuf":
        raise InvalidInputError(
            f"input dtype {dtype} is not supported: use a boolean, integer or floating-point array"
        )
    if array.ndim == 0 or 0 in array.shape:
        raise InvalidInputError(f"input is empty (shape {tuple(array.shape)})")
    header = json.dumps(
        {
            "shape": [int(s) for s in array.shape],
            "dtype": dtype.str,
            "chunks": [[int(c) for c in axis] for axis in array.chunks],
        }
    ).encode("utf-8")
    blocks = array.to_delayed(optimize_graph=True)
    per_chunk = [
        dask.delayed(_chunk_stats, pure=True)(blocks[index], index)
        for index in np.ndindex(*blocks.shape)
    ]
    total = dask.delayed(_combine, pure=True)(per_chunk, header)
    value_min, value_max, digest, bad = total.compute()
    if bad is not None:
        where = ", ".join(
            f"{sum(axis[:i])}:{sum(axis[: i + 1])}"
            for axis, i in zip(array.chunks, bad, strict=True)
        )
        raise InvalidInputError(
            f"input contains NaN or infinite values (e.g. in the chunk at [{where}]); replace "
            "them before fitting"
        )
    return InputStats(float(value_min), float(value_max), digest)
