"""The model store: a fitted model as a ``*.miner.zarr`` directory (a zarr group).

On-disk layout (zarr format 2)::

    model.miner.zarr/
        .zgroup, .zattrs         root attributes: format, format_version, config, layout,
                                 metadata, levels (shape, block_size, n_mlps, stats per level),
                                 arrays (shape, dtype and sha256 of every array)
        levels/{j}/block_ids     (n_j,) int64, sorted flat block indices with an MLP
        levels/{j}/weight_{l}    (n_j, out_l, in_l) float32
        levels/{j}/bias_{l}      (n_j, out_l, 1) float32

Zarr format 2 is written because every zarr implementation reads it (zarr-python 2 and 3 alike);
the loader also accepts format 3. Arrays are compressed with Blosc (zstd, byte shuffle) in chunks of
about 1 MiB along the first (MLP) axis. Non-finite floats in the attributes are stored as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` so that the attributes stay standard JSON.

Loading never unpickles or executes anything: arrays must be plain ``int64``/``float32`` arrays
with whitelisted codecs, and every array's checksum is verified, so missing chunks (which zarr
silently reads as fill values) or corrupted ones are reported. Saving writes a temporary sibling
directory and renames it into place, so the final path holds either the previous complete model
or the new one (or, after a crash in the middle of replacing one, none).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..core.blocks import BlockGrid
from ..core.config import MinerConfig
from ..core.errors import MinerError, ModelFormatError
from ..core.layout import InputLayout
from ..core.mlp_bank import layer_sizes
from ..core.model import LevelParams, PyramidModel
from ..core.pyramid import level_shapes

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SUFFIX", "load_model", "save_model"]

FORMAT_NAME = "napari-miner.model"
"""Value of the ``format`` attribute of every model store."""

FORMAT_VERSION = 2
"""Newest store format version this package reads: 1 is written by :func:`save_model`, 2 (tiled,
see :mod:`napari_miner.io.tiled_store`) by out-of-core fits."""

_SPARSE_VERSION = 1

SUFFIX = ".miner.zarr"
"""Recommended suffix of model stores."""

ZARR_FORMAT = 2

_CHUNK_BYTES = 1 << 20
_INT = np.dtype("<i8")
_FLOAT = np.dtype("<f4")
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# codecs that only (de)compress or reorder bytes; anything else (pickle, object codecs, ...) is refused
_SAFE_CODECS = {
    "blosc", "zstd", "lz4", "zlib", "gzip", "bz2", "lzma", "shuffle", "delta",
    "crc32", "crc32c", "adler32", "fletcher32", "bytes", "transpose", "sharding_indexed",
}  # fmt: skip

M = TypeVar("M", bound=PyramidModel)


# ------------------------------------------------------------------------------------- saving
def save_model(model: PyramidModel, path: str | PathLike[str]) -> None:
    """Write ``model`` to a zarr directory store at ``path``, atomically.

    The store is written to a temporary sibling directory and renamed into place; an existing model
    at ``path`` is moved aside first and deleted only once the new one is in place. On any error the
    temporary directory is removed and a previous model at ``path`` is left untouched.

    Parameters
    ----------
    model : PyramidModel
        The model to save.
    path : str or os.PathLike
        Directory of the store; ``*.miner.zarr`` is the recommended name.

    Raises
    ------
    ModelFormatError
        If ``path`` is a regular file or a directory that is not a napari-miner model (it is never
        overwritten), or the model cannot be stored (inconsistent arrays, non-JSON metadata).
    FileNotFoundError
        If the parent directory of ``path`` does not exist.
    """
    if not isinstance(model, PyramidModel):
        raise TypeError(f"expected a fitted model, got {type(model).__name__}")
    target = Path(os.fspath(path)).expanduser()
    if target.name in ("", ".", ".."):
        raise ModelFormatError(f"{os.fspath(path)!r} is not a valid model path: name the store")
    target = target.parent.resolve() / target.name
    if target.is_symlink():
        target = target.resolve()
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"cannot save the model to {target}: directory {target.parent} does not exist"
        )
    check_overwritable(target)
    source = _backing_store(model)
    if source is not None and source.resolve() == target:
        return  # the model already lives there
    arrays, attributes = ({}, {}) if source is not None else _serialize(model)

    temporary = _new_sibling(target, "tmp")
    try:
        if source is not None:
            temporary.rmdir()
            shutil.copytree(source, temporary)
        else:
            _write_store(temporary, arrays, attributes)
        _fsync_tree(temporary)
        _swap_into_place(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _backing_store(model: PyramidModel) -> Path | None:
    """The tiled store a model is read from, or ``None`` for a model held in memory."""
    from .tiled_store import StoredLevel

    stores = {level.store.path for level in model.levels if isinstance(level, StoredLevel)}
    if not stores:
        return None
    if (
        len(stores) > 1
        or len(stores) == 1
        and not all(isinstance(level, StoredLevel) for level in model.levels)
    ):
        raise ModelFormatError("cannot save a model that mixes levels of several stores")
    return Path(stores.pop())


def check_overwritable(target: Path) -> None:
    """Refuse to replace anything at ``target`` but a napari-miner model or an empty directory."""
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise ModelFormatError(
            f"cannot save the model to {target}: a file of that name exists and is not a model "
            f"store (a store is a directory; use a name ending in {SUFFIX!r})"
        )
    if not any(target.iterdir()):
        return
    if _root_attributes_raw(target).get("format") != FORMAT_NAME:
        raise ModelFormatError(
            f"cannot save the model to {target}: the directory exists and is not a napari-miner "
            "model, so it is not overwritten; choose another path or remove it"
        )


def _root_attributes_raw(path: Path) -> dict[str, Any]:
    """The root attributes of a zarr group, read as plain JSON ({} if absent or unreadable)."""
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        try:
            with open(path / name, encoding="utf-8") as handle:
                content = json.load(handle)
        except (OSError, ValueError):
            continue
        if key is not None and isinstance(content, dict):
            content = content.get(key, {})
        if isinstance(content, dict):
            return content
    return {}


def _serialize(model: PyramidModel) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays (by store path) and root attributes of ``model``."""
    layout, config = model.layout, model.config
    _check_model_structure(layout, config, [lv.grid.shape for lv in model.levels])
    arrays: dict[str, np.ndarray] = {}
    levels = []
    for j, level in enumerate(model.levels):
        if level.grid.block_size != config.block_size:
            raise ModelFormatError(
                f"level {j} has block_size {level.grid.block_size}, the config {config.block_size}"
            )
        level_arrays = {"block_ids": level.block_ids.detach().cpu().numpy().astype(_INT)}
        for index, (w, b) in enumerate(zip(level.weights, level.biases, strict=True)):
            level_arrays[f"weight_{index}"] = w.detach().cpu().numpy().astype(_FLOAT)
            level_arrays[f"bias_{index}"] = b.detach().cpu().numpy().astype(_FLOAT)
        if len(level.weights) != len(level.biases):
            raise ModelFormatError(f"level {j} has different numbers of weights and biases")
        _check_level_arrays(j, level_arrays, layout, config, level.grid)
        arrays.update({f"levels/{j}/{name}": a for name, a in level_arrays.items()})
        levels.append(
            {
                "shape": list(level.grid.shape),
                "block_size": level.grid.block_size,
                "n_mlps": level.n_mlps,
                "stats": _to_json(level.stats, f"level {j} stats"),
            }
        )
    attributes = {
        "format": FORMAT_NAME,
        "format_version": _SPARSE_VERSION,
        "config": _to_json(config.to_dict(), "config"),
        "layout": _to_json(layout.to_dict(), "layout"),
        "metadata": _to_json(model.metadata, "metadata"),
        "levels": levels,
        "arrays": {
            name: {"shape": list(a.shape), "dtype": a.dtype.str, "sha256": _digest(a)}
            for name, a in arrays.items()
        },
    }
    return arrays, attributes


def _write_store(directory: Path, arrays: dict[str, np.ndarray], attributes: dict) -> None:
    import zarr
    from zarr.storage import LocalStore

    group = zarr.open_group(store=LocalStore(str(directory)), mode="w", zarr_format=ZARR_FORMAT)
    for name, data in arrays.items():
        _write_array(group, name, data)
    # the attributes (format name first of all) come last: a store without them never loads
    group.attrs.update(attributes)


def _write_array(group: Any, name: str, data: np.ndarray) -> None:
    """Write one array with chunks of about 1 MiB along its first axis."""
    row_bytes = data.dtype.itemsize * math.prod(data.shape[1:])
    rows = max(1, min(max(data.shape[0], 1), _CHUNK_BYTES // max(row_bytes, 1)))
    group.create_array(name, data=data, chunks=(rows, *data.shape[1:]), compressors=_compressor())


def _compressor() -> Any:
    """Blosc zstd with byte shuffle: about 6 % smaller than zarr's defaults on trained weights."""
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)


def _new_sibling(target: Path, kind: str) -> Path:
    """Create and return a new hidden directory next to ``target``."""
    while True:
        candidate = target.parent / f".{target.name}.{kind}-{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate


def _swap_into_place(temporary: Path, target: Path) -> None:
    """Rename ``temporary`` to ``target``, replacing (and then deleting) a previous store there."""
    backup = None
    if os.path.lexists(target):
        backup = _new_sibling(target, "old")
        backup.rmdir()
        os.replace(target, backup)
    try:
        os.replace(temporary, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    _fsync_directory(target.parent)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk (so a renamed store is complete)."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_directory(Path(directory))


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ loading
def load_model(path: str | PathLike[str], model_class: Callable[..., M]) -> M:
    """Read a store written by :func:`save_model`.

    Nothing is unpickled or executed: only JSON attributes and plain numeric arrays are read, and
    every array is checked against its recorded shape, dtype and sha256 checksum.

    Parameters
    ----------
    path : str or os.PathLike
        The ``*.miner.zarr`` directory.
    model_class : type
        A :class:`~napari_miner.core.model.PyramidModel` subclass, constructed as
        ``model_class(layout, config, levels, metadata)``.

    Raises
    ------
    ModelFormatError
        If the store is missing, not a napari-miner model, of a newer format version, incomplete,
        inconsistent or corrupted.
    """
    location = Path(os.fspath(path)).expanduser()
    group = _open_group(location)
    attributes = _from_json(_read_attributes(group, location))
    _check_format(attributes, location)
    if attributes.get("storage") == "tiled":
        from .tiled_store import TiledStore

        return TiledStore.open(location).model(model_class)
    try:
        config = MinerConfig.from_dict(_mapping(attributes, "config"))
    except (MinerError, TypeError, ValueError, KeyError) as error:
        raise ModelFormatError(f"{location}: invalid config attribute: {error}") from error
    layout = _read_layout(attributes, location)
    metadata = attributes.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ModelFormatError(f"{location}: the 'metadata' attribute is not a JSON object")
    manifest = _mapping(attributes, "arrays", location)
    level_info = attributes.get("levels")
    if not isinstance(level_info, list) or not level_info:
        raise ModelFormatError(f"{location}: the 'levels' attribute is missing or empty")
    try:
        grids = [
            BlockGrid(tuple(int(s) for s in info["shape"]), int(info["block_size"]))
            for info in level_info
        ]
    except (TypeError, KeyError, ValueError) as error:
        raise ModelFormatError(f"{location}: invalid 'levels' attribute: {error}") from error
    try:
        _check_model_structure(layout, config, [g.shape for g in grids])
    except ModelFormatError as error:
        raise ModelFormatError(f"{location}: {error}") from None

    levels = []
    n_layers = config.hidden_layers + 2
    for j, (info, grid) in enumerate(zip(level_info, grids, strict=True)):
        if grid.block_size != config.block_size:
            raise ModelFormatError(
                f"{location}: level {j} has block_size {grid.block_size} but the config says "
                f"{config.block_size}"
            )
        names = ["block_ids"] + [
            f"{kind}_{i}" for i in range(n_layers) for kind in ("weight", "bias")
        ]
        level_arrays = {
            name: _read_array(group, f"levels/{j}/{name}", manifest, location) for name in names
        }
        try:
            _check_level_arrays(j, level_arrays, layout, config, grid)
        except ModelFormatError as error:
            raise ModelFormatError(f"{location}: {error}") from None
        stats = info.get("stats", {})
        if not isinstance(stats, dict):
            raise ModelFormatError(f"{location}: level {j} stats are not a JSON object")
        levels.append(
            LevelParams(
                grid,
                torch.from_numpy(level_arrays["block_ids"]),
                [torch.from_numpy(level_arrays[f"weight_{i}"]) for i in range(n_layers)],
                [torch.from_numpy(level_arrays[f"bias_{i}"]) for i in range(n_layers)],
                stats,
            )
        )
    try:
        return model_class(layout, config, levels, metadata)
    except MinerError as error:
        raise ModelFormatError(f"{location}: the stored model is inconsistent: {error}") from error


def _open_group(location: Path) -> Any:
    import zarr
    from zarr.storage import LocalStore

    if not os.path.lexists(location):
        hint = ""
        backups = sorted(location.parent.glob(f".{location.name}.old-*"))
        if backups:
            hint = (
                f"; a save to it was interrupted and the previous model is in {backups[-1]} "
                "(rename it back)"
            )
        raise ModelFormatError(f"no model store at {location}: the path does not exist{hint}")
    if not location.is_dir():
        raise ModelFormatError(
            f"{location} is not a model store: a napari-miner model is a directory "
            f"(`*{SUFFIX}`) written by MinerModel.save"
        )
    try:
        store = LocalStore(str(location), read_only=True)
        return zarr.open_group(store=store, mode="r")
    except Exception as error:
        raise ModelFormatError(
            f"{location} is not a napari-miner model store (no readable zarr group: {error})"
        ) from error


def _read_attributes(group: Any, location: Path) -> dict[str, Any]:
    try:
        attributes = group.attrs.asdict()
    except Exception as error:
        raise ModelFormatError(
            f"{location}: cannot read the store's attributes: {error}"
        ) from error
    if not isinstance(attributes, dict):
        raise ModelFormatError(f"{location}: the store's attributes are not a JSON object")
    return attributes


def _check_format(attributes: dict[str, Any], location: Path) -> None:
    name = attributes.get("format")
    if name != FORMAT_NAME:
        found = "no 'format' attribute" if name is None else f"format {name!r}"
        raise ModelFormatError(
            f"{location} is a zarr group but not a napari-miner model ({found}, expected "
            f"{FORMAT_NAME!r})"
        )
    version = attributes.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFormatError(f"{location}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{location} was saved by a newer napari-miner (model format version {version}; this "
            f"version reads up to {FORMAT_VERSION}): upgrade napari-miner to open it"
        )


def _mapping(attributes: dict[str, Any], key: str, location: Path | None = None) -> dict:
    value = attributes.get(key)
    if not isinstance(value, dict):
        where = f"{location}: " if location is not None else ""
        raise ModelFormatError(f"{where}the {key!r} attribute is missing or not a JSON object")
    return value


def _read_layout(attributes: dict[str, Any], location: Path) -> InputLayout:
    try:
        layout = InputLayout.from_dict(_mapping(attributes, "layout"))
        dtype = np.dtype(layout.dtype)
        spatial = layout.spatial_shape
    except (MinerError, TypeError, ValueError, KeyError) as error:
        raise ModelFormatError(f"{location}: invalid layout attribute: {error}") from error
    problems = []
    if dtype.kind not in "biuf":
        problems.append(f"unsupported dtype {layout.dtype!r}")
    if layout.channel_axis is not None and not 0 <= layout.channel_axis < len(layout.shape):
        problems.append(f"channel_axis {layout.channel_axis} out of range")
    if len(spatial) not in (2, 3) or min(layout.shape, default=0) < 1:
        problems.append(f"unsupported shape {layout.shape}")
    if not (math.isfinite(layout.value_min) and math.isfinite(layout.value_max)):
        problems.append("non-finite value range")
    if problems:
        raise ModelFormatError(f"{location}: invalid layout attribute: {', '.join(problems)}")
    return layout


def _read_array(group: Any, name: str, manifest: dict, location: Path) -> np.ndarray:
    """Read and verify one array; refuses anything but plain int64/float32 data."""
    expected = manifest.get(name)
    if not isinstance(expected, dict) or not isinstance(expected.get("sha256"), str):
        raise ModelFormatError(f"{location}: array {name!r} is not listed in the store's manifest")
    try:
        array = group[name]
        metadata = array.metadata.to_dict()
        dtype = np.dtype(array.dtype)
        shape = tuple(array.shape)
    except KeyError:
        raise ModelFormatError(
            f"{location}: array {name!r} is missing (incomplete or damaged store)"
        ) from None
    except Exception as error:
        raise ModelFormatError(f"{location}: cannot open array {name!r}: {error}") from error
    if dtype.kind not in "iuf" or dtype.str != str(expected.get("dtype")):
        raise ModelFormatError(
            f"{location}: array {name!r} has dtype {dtype}, expected {expected.get('dtype')!r}"
        )
    unsafe = sorted(_codec_names(metadata) - _SAFE_CODECS)
    if unsafe:
        raise ModelFormatError(f"{location}: array {name!r} uses unsupported codecs {unsafe}")
    if list(shape) != expected.get("shape"):
        raise ModelFormatError(
            f"{location}: array {name!r} has shape {shape}, the manifest says {expected.get('shape')}"
        )
    try:
        data = np.asarray(array[...])
    except Exception as error:
        raise ModelFormatError(
            f"{location}: array {name!r} cannot be read (corrupted or truncated chunk): {error}"
        ) from error
    if _digest(data) != expected["sha256"]:
        raise ModelFormatError(
            f"{location}: array {name!r} does not match its checksum: the store is incomplete or "
            "corrupted (a chunk file is missing or damaged)"
        )
    return np.ascontiguousarray(data, dtype=dtype.newbyteorder("="))


def _codec_names(metadata: Any) -> set[str]:
    """Names of every codec, filter and compressor in an array's metadata (format 2 or 3)."""
    names: set[str] = set()
    entries: list[Any] = []
    if metadata.get("zarr_format") == 2:
        entries = [metadata.get("compressor"), *(metadata.get("filters") or [])]
    else:
        entries = list(metadata.get("codecs") or [])
    while entries:
        entry = entries.pop()
        if entry is None:
            continue
        if not isinstance(entry, dict):
            names.add(repr(entry))
            continue
        name = entry.get("id", entry.get("name"))
        names.add(str(name).removeprefix("numcodecs."))
        configuration = entry.get("configuration") or {}
        if isinstance(configuration, dict):
            for key in ("codecs", "index_codecs"):
                entries.extend(configuration.get(key) or [])
    return names


# ------------------------------------------------------------------------------------- checks
def _check_model_structure(
    layout: InputLayout, config: MinerConfig, shapes: Sequence[tuple[int, ...]]
) -> None:
    """The level shapes must be those of the layout's pyramid with ``config.n_levels`` levels."""
    if len(shapes) != config.n_levels:
        raise ModelFormatError(f"{len(shapes)} levels, but the config has {config.n_levels}")
    expected = level_shapes(layout.spatial_shape, config.n_levels)
    for j, (shape, want) in enumerate(zip(shapes, expected, strict=True)):
        if tuple(shape) != want:
            raise ModelFormatError(f"level {j} has shape {tuple(shape)}, expected {want}")


def _check_level_arrays(
    j: int, arrays: dict[str, np.ndarray], layout: InputLayout, config: MinerConfig, grid: BlockGrid
) -> None:
    """The arrays of level ``j`` must fit the config's MLP sizes and the level's block grid."""
    ids = arrays["block_ids"]
    if ids.ndim != 1 or ids.dtype.kind != "i":
        raise ModelFormatError(f"level {j}: block_ids must be a 1D integer array")
    n = ids.shape[0]
    if n and (ids[0] < 0 or ids[-1] >= grid.n_blocks or np.any(np.diff(ids) <= 0)):
        raise ModelFormatError(
            f"level {j}: block_ids must be sorted, unique and in [0, {grid.n_blocks})"
        )
    sizes = layer_sizes(grid.ndim, config.width_at(j), config.hidden_layers, layout.n_channels)
    layers = sum(1 for name in arrays if name.startswith("weight_"))
    if layers != len(sizes):
        raise ModelFormatError(f"level {j} has {layers} layers, the config implies {len(sizes)}")
    for index, (n_out, n_in) in enumerate(sizes):
        for kind, want in (("weight", (n, n_out, n_in)), ("bias", (n, n_out, 1))):
            array = arrays[f"{kind}_{index}"]
            if array.shape != want or array.dtype.kind != "f" or array.dtype.itemsize != 4:
                raise ModelFormatError(
                    f"level {j}: {kind}_{index} has shape {array.shape} and dtype {array.dtype}, "
                    f"expected {want} float32 (MLP width {config.width_at(j)}, "
                    f"{layout.n_channels} channel(s), {n} MLPs)"
                )


# --------------------------------------------------------------------------------- encoding
def _digest(array: np.ndarray) -> str:
    """sha256 of the array's little-endian C-order bytes."""
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return hashlib.sha256(data.view(np.uint8).reshape(-1)).hexdigest()


def _to_json(value: Any, what: str) -> Any:
    """Plain JSON copy of ``value`` (numpy scalars converted, non-finite floats as strings)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ModelFormatError(f"cannot store {what}: key {key!r} is not a string")
            out[key] = _to_json(item, what)
        return out
    if isinstance(value, list | tuple):
        return [_to_json(item, what) for item in value]
    if isinstance(value, np.ndarray):
        return _to_json(value.tolist(), what)
    raise ModelFormatError(
        f"cannot store {what}: {type(value).__name__} value {value!r} is not plain JSON"
    )


def _from_json(value: Any) -> Any:
    """Inverse of :func:`_to_json` (the strings of non-finite floats become floats again)."""
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {key: _from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    return value
