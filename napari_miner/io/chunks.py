"""Zarr (format 2) arrays read and written chunk by chunk, with every size bounded.

A model store is a plain zarr v2 group, so any zarr reader can open it. napari-miner itself reads and
writes its chunks here, because a store is untrusted input: a chunk is decoded only into a buffer of
the size its array's metadata declares (a compressed "bomb" that claims more is refused before
anything is allocated), files are read only up to a size limit, only whitelisted compressors are
accepted (nothing that could unpickle or run code), and chunks are written to a temporary file and
renamed, so that a reader never sees half a chunk.

Files are never read or written through a symbolic link, and a named pipe is never waited on: a
chunk's directory must be its own real path (stores are opened by their resolved path), and files are
opened without following a final link, without blocking, and used only if they are regular files.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ModelFormatError

__all__ = [
    "ArraySpec",
    "check_real_directory",
    "read_chunk",
    "read_file",
    "read_json",
    "write_chunk",
    "write_json",
]

COMPRESSORS = ("blosc",)
"""Compressors read: Blosc, whose header states the decoded and compressed sizes, so a chunk is
checked against its array's metadata before it is decoded (into a buffer of exactly that size)."""

MAX_JSON_BYTES = 16 << 20
"""Largest metadata (``.zattrs``, ``.zarray``) file that is read."""

BLOSC_CODECS = ("blosclz", "lz4", "lz4hc", "zlib", "zstd", "snappy")
"""Inner codecs a Blosc configuration may name (the chunks' headers say which one they use)."""
_BLOSC_KEYS = {"id", "cname", "clevel", "shuffle", "blocksize", "typesize"}
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _compressor_codec(config: dict[str, Any] | None) -> Any:
    if config is None:
        return None
    from numcodecs import Blosc

    return Blosc(
        cname=str(config.get("cname", "zstd")),
        clevel=int(config.get("clevel", 5)),
        shuffle=int(config.get("shuffle", Blosc.SHUFFLE)),
        blocksize=int(config.get("blocksize", 0)),
    )


def _check_blosc_header(raw: bytes, expected: int) -> None:
    """A Blosc chunk must state ``expected`` decoded bytes and its own length as compressed size.

    Its block size (the unit Blosc allocates buffers for) must not exceed the decoded size.
    """
    if len(raw) < 16:
        raise ValueError("shorter than a Blosc header")
    nbytes, blocksize, cbytes = (int(v) for v in np.frombuffer(raw[4:16], dtype="<u4"))
    if nbytes != expected or cbytes != len(raw):
        raise ValueError(
            f"the header states {nbytes} decoded bytes in {cbytes}, expected {expected} "
            f"in {len(raw)}"
        )
    if blocksize > max(nbytes, 1) or (nbytes and not blocksize):
        raise ValueError(f"the header states a block size of {blocksize} bytes")


def _check_compressor(config: Any, where: str) -> None:
    """A compressor configuration must be Blosc's, with valid settings and nothing else."""
    if config is None:
        return
    if not isinstance(config, dict) or config.get("id") not in COMPRESSORS:
        raise ModelFormatError(
            f"{where}: compressor {config!r} is not one of {', '.join(COMPRESSORS)}"
        )
    unknown = set(config) - _BLOSC_KEYS
    cname = config.get("cname", "lz4")
    settings = {k: config.get(k, 0) for k in ("clevel", "shuffle", "blocksize")}
    typesize = config.get("typesize")
    valid = (
        not unknown
        and cname in BLOSC_CODECS
        and all(isinstance(v, int) and not isinstance(v, bool) for v in settings.values())
        and 0 <= settings["clevel"] <= 9
        and -1 <= settings["shuffle"] <= 2
        and 0 <= settings["blocksize"] <= 1 << 31
        and (typesize is None or (_int_list([typesize]) and 0 < typesize <= 255))
    )
    if not valid:
        raise ModelFormatError(f"{where}: invalid Blosc compressor configuration {config!r}")


def default_compressor() -> dict[str, Any]:
    """Blosc with zstd and byte shuffle: the compressor napari-miner writes."""
    return {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1, "blocksize": 0}


FIT_CLEVEL = 1
"""Blosc level of quantised weights written while fitting (a save writes them at level 9)."""


def quantized_compressor() -> dict[str, Any]:
    """Blosc with zstd at its strongest and bit shuffle, for quantised weights (zigzag codes)."""
    return {"id": "blosc", "cname": "zstd", "clevel": 9, "shuffle": 2, "blocksize": 0}


@dataclass(frozen=True)
class ArraySpec:
    """The metadata of one zarr v2 array (what its ``.zarray`` says).

    Attributes
    ----------
    shape, chunks : tuple of int
        Array and chunk shape.
    dtype : str
        NumPy dtype string (``"<f4"``, ``"|u1"``, ...).
    compressor : dict or None
        numcodecs configuration of the compressor (one of :data:`COMPRESSORS`), or ``None``.
    """

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    compressor: dict[str, Any] | None = None

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one decoded chunk."""
        return math.prod(self.chunks) * np.dtype(self.dtype).itemsize

    @property
    def chunk_grid(self) -> tuple[int, ...]:
        """Chunks along each axis."""
        return tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunks, strict=True))

    def to_zarray(self) -> dict[str, Any]:
        """The ``.zarray`` document."""
        return {
            "zarr_format": 2,
            "shape": list(self.shape),
            "chunks": list(self.chunks),
            "dtype": self.dtype,
            "compressor": self.compressor,
            "fill_value": 0,
            "order": "C",
            "filters": None,
            "dimension_separator": ".",
        }

    @classmethod
    def from_zarray(cls, meta: Any, where: str) -> ArraySpec:
        """Parse and check a ``.zarray`` document (raises :class:`ModelFormatError`)."""
        if not isinstance(meta, dict) or meta.get("zarr_format") != 2:
            raise ModelFormatError(f"{where}: not a zarr format 2 array")
        shape, chunks = meta.get("shape"), meta.get("chunks")
        if not (_int_list(shape) and _int_list(chunks) and len(shape) == len(chunks)):
            raise ModelFormatError(f"{where}: invalid shape {shape!r} or chunks {chunks!r}")
        if min(shape, default=1) < 0 or min(chunks, default=1) < 1:
            raise ModelFormatError(f"{where}: negative shape {shape} or empty chunks {chunks}")
        if meta.get("order") != "C" or meta.get("filters") not in (None, []):
            raise ModelFormatError(f"{where}: only C-order arrays without filters are read")
        if meta.get("dimension_separator", ".") != ".":
            raise ModelFormatError(f"{where}: unsupported dimension separator")
        compressor = meta.get("compressor")
        _check_compressor(compressor, where)
        dtype = meta.get("dtype")
        try:
            kind = np.dtype(dtype).kind if isinstance(dtype, str) else "?"
        except TypeError:
            kind = "?"
        if kind not in "biuf":
            raise ModelFormatError(f"{where}: dtype {dtype!r} is not numeric")
        return cls(tuple(shape), tuple(chunks), dtype, compressor)


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def check_real_directory(directory: Path, what: str) -> None:
    """Refuse a directory that is reached through a symbolic link.

    Stores are opened by their resolved path, so every directory inside one is its own real path;
    one that is not was replaced by a link (or lies under one) and could lead outside the store.

    Raises
    ------
    ModelFormatError
        If ``directory`` is not its own real path.
    """
    if os.path.realpath(directory) != os.path.abspath(directory):
        raise ModelFormatError(
            f"{what}: {directory} is reached through a symbolic link; a model store is never read "
            "or written through links"
        )


def read_file(path: Path, limit: int, what: str) -> bytes | None:
    """At most ``limit + 1`` bytes of the regular file ``path`` (``None`` if it does not exist).

    A final symbolic link is not followed, and a named pipe or device is refused without waiting
    for it (on platforms with ``O_NOFOLLOW`` and ``O_NONBLOCK``; a store's listing refuses both
    everywhere).

    Raises
    ------
    ModelFormatError
        If ``path`` is a link, not a regular file, or cannot be read.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP or os.path.islink(path):
            raise ModelFormatError(f"{what}: {path} is a symbolic link") from None
        raise ModelFormatError(f"{what}: {path} cannot be read: {error}") from error
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelFormatError(f"{what}: {path} is not a regular file")
        parts, size = [], 0
        while size <= limit:
            part = os.read(fd, limit + 1 - size)
            if not part:
                break
            parts.append(part)
            size += len(part)
        return b"".join(parts)
    except OSError as error:
        raise ModelFormatError(f"{what}: {path} cannot be read: {error}") from error
    finally:
        os.close(fd)


def read_json(path: Path, what: str) -> Any:
    """A JSON document of at most :data:`MAX_JSON_BYTES` (a regular file, not a link).

    ``NaN`` and ``Infinity`` are read as floats (zarr writes them); the schema decides where they
    are allowed.
    """
    raw = read_file(path, MAX_JSON_BYTES, what)
    if raw is None:
        raise ModelFormatError(f"{what} cannot be read: {path} does not exist")
    if len(raw) > MAX_JSON_BYTES:
        raise ModelFormatError(f"{what} is larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ModelFormatError(f"{what} is not valid JSON: {error}") from None


def write_json(path: Path, document: Any) -> None:
    """Write a JSON document atomically (temporary file, then rename)."""
    _write_bytes(path, json.dumps(document, separators=(",", ":"), allow_nan=False).encode())


def _write_bytes(path: Path, data: bytes, durable: bool = False) -> None:
    temporary = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def chunk_key(index: Sequence[int]) -> str:
    """File name of a chunk (``"3.0.1"``)."""
    return ".".join(str(int(i)) for i in index)


def write_chunk(
    directory: Path, spec: ArraySpec, index: Sequence[int], data: np.ndarray, durable: bool = False
) -> None:
    """Write one chunk (an edge chunk is padded with zeros to the full chunk shape).

    With ``durable``, the chunk's bytes are flushed to disk before it is renamed into place.

    Raises
    ------
    ModelFormatError
        If ``directory`` is reached through a symbolic link (nothing is written through one).
    """
    check_real_directory(directory, "cannot write a chunk")
    data = np.asarray(data, dtype=np.dtype(spec.dtype))
    if data.shape != spec.chunks:
        full = np.zeros(spec.chunks, dtype=data.dtype)
        full[tuple(slice(0, s) for s in data.shape)] = data
        data = full
    raw = np.ascontiguousarray(data).tobytes()
    codec = _compressor_codec(spec.compressor)
    if codec is not None:
        raw = bytes(codec.encode(raw))
    _write_bytes(directory / chunk_key(index), raw, durable)


def read_chunk(
    directory: Path, spec: ArraySpec, index: Sequence[int], what: str, missing_is_zero: bool = False
) -> np.ndarray:
    """Read and decode one chunk, cropped to the array's extent.

    A missing chunk file is an error, unless ``missing_is_zero`` (zarr's writers leave out chunks
    that hold only the fill value; a checksum then tells whether it should have been there).

    Raises
    ------
    ModelFormatError
        If the chunk file is missing, a link or not a regular file, too large, or does not
        decode to exactly one chunk.
    """
    path = directory / chunk_key(index)
    limit = spec.chunk_bytes + (1 << 16)  # a compressed chunk is never much larger than raw
    check_real_directory(directory, what)
    raw = read_file(path, limit, what)
    if raw is None and not missing_is_zero:
        raise ModelFormatError(f"{what}: chunk file {path} is missing")
    if raw is not None and len(raw) > limit:
        raise ModelFormatError(f"{what}: chunk file {path} is larger than a chunk can be")
    out = np.empty(spec.chunks, dtype=np.dtype(spec.dtype))
    codec = _compressor_codec(spec.compressor)
    try:
        if raw is None:
            out[...] = 0
        elif codec is None:
            if len(raw) != out.nbytes:
                raise ValueError(f"{len(raw)} bytes instead of {out.nbytes}")
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(raw, dtype=np.uint8)
        else:
            _check_blosc_header(raw, out.nbytes)
            codec.decode(raw, out=out.reshape(-1).view(np.uint8))
    except Exception as error:  # numcodecs raises many types for damaged data
        raise ModelFormatError(
            f"{what}: chunk file {path} is damaged ({type(error).__name__}: {error})"
        ) from error
    crop = tuple(
        slice(0, min(c, s - i * c)) for c, s, i in zip(spec.chunks, spec.shape, index, strict=True)
    )
    return out[crop]
