"""Input: open a (possibly huge) image or volume lazily, and scan it once.

:func:`open_input` turns whatever the user points at (a zarr store on disk, a path into one, an
OME-Zarr image, an image file, a ``.npy`` file, a zarr, dask or NumPy array) into an
:class:`InputSource`: a dask array plus what the store's metadata says about it (display name,
location, channel axis). For zarr stores it reads metadata only, never pixel data; ``.npy`` files
are memory-mapped and read chunk by chunk; other image files (``.png``, ``.tif``, ...) are read
whole with ``skimage.io.imread``.

:func:`scan_input` then makes one chunk-by-chunk pass over the array to find its value range, to
refuse NaN and infinity, and to compute a content digest (see :class:`InputStats`); memory stays
bounded by a few chunks.

OME-Zarr (NGFF 0.4, zarr format 2, attributes in ``.zattrs``; NGFF 0.5, zarr format 3, attributes
under ``"ome"`` in ``zarr.json``): the image's level 0 (``multiscales[0].datasets[0].path``) is
opened and its ``axes`` are honoured:

- a ``time`` axis (or any other non-space, non-channel axis) of length 1 is squeezed away; longer
  ones are refused (select a time point first);
- the ``channel`` axis becomes :attr:`InputSource.channel_axis` (its index after squeezing);
- ``space`` axes (z, y, x) are kept in order, except that space axes of length 1 are squeezed
  while at least two spatial axes remain, so that a 2D image written as 5D ``(t, c, z, y, x)``
  with ``z = 1`` (as bioformats2raw does) opens as a 2D image.

A path that points at an array inside an OME-Zarr image (``image.zarr/1``) gets the same axes
treatment as the image itself.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import InvalidInputError

if TYPE_CHECKING:
    import dask.array

__all__ = ["IMAGE_SUFFIXES", "InputSource", "open_input"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""Image files read with ``skimage.io.imread`` (any other file but ``.npy`` is tried too)."""

SUPPORTED_INPUTS = (
    "zarr arrays, zarr groups (with a component), OME-Zarr images, .npy files and image files "
    f"({', '.join(IMAGE_SUFFIXES)})"
)
"""What :func:`open_input` opens from a path, for error messages."""

# dask chunks of a sharded zarr v3 array are whole shards when a shard is at most this big
_MAX_SHARD_BYTES = 128 << 20
# how many candidate arrays an error message lists
_MAX_LISTED = 12
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


@dataclass(frozen=True)
class InputSource:
    """A lazily read input image or volume.

    Attributes
    ----------
    array : dask.array.Array
        The level-0 image or volume, read lazily, in the chunks it is stored in (whole shards for
        sharded zarr v3 arrays whose shards are at most 128 MiB). Squeezed OME-Zarr axes are
        already removed.
    name : str
        Short display name: the store's directory name, followed by the array's path inside the
        store if it is not at the root (``"slide.zarr/scans/0"``); the file name of an image or
        ``.npy`` file.
    path : str or None
        Filesystem location of the zarr store (its root directory) or of the file; ``None`` for
        in-memory arrays.
    channel_axis : int or None
        Axis of :attr:`array` holding channels, from OME-Zarr ``axes`` metadata (the axis of type
        ``"channel"``); ``None`` otherwise.
    is_ome : bool
        Whether the array was read as (part of) an OME-Zarr image.
    component : str or None
        Path of the array inside the store at :attr:`path` (``""`` for an array at the root);
        ``open_input(path, component=component)`` opens the same array again. ``None`` for
        files and in-memory arrays.
    """

    array: dask.array.Array
    name: str
    path: str | None
    channel_axis: int | None
    is_ome: bool
    component: str | None = None


# ----------------------------------------------------------------------------------- opening
def open_input(source: Any, *, component: str | None = None) -> InputSource:
    """Open an image or volume lazily (zarr stores: without reading any pixel data).

    Parameters
    ----------
    source : str, os.PathLike, zarr.Array, dask.array.Array or numpy.ndarray
        A path to a zarr store (format 2 or 3) holding an array at its root; a path to a zarr
        group (then pass ``component``); a path into a store (``"/data/slide.zarr/scans/0"``,
        the store root is found by walking up); an OME-Zarr image (group with NGFF
        ``multiscales`` metadata, whose level 0 is opened); a ``.npy`` file (memory-mapped, read
        lazily, never unpickled); an image file read with ``skimage.io.imread`` (``.png``,
        ``.tif``, ... see :data:`IMAGE_SUFFIXES`; a multi-page TIFF is a volume); or an array.
    component : str, optional
        Path, inside the group that ``source`` points at, of the array (or OME-Zarr image) to
        open. Only for paths of zarr stores.

    Returns
    -------
    InputSource
        The lazily read array and what the store's metadata says about it.

    Raises
    ------
    InvalidInputError
        If the path does not exist or is neither a zarr store nor a readable ``.npy`` or image
        file (the message lists the supported inputs), a group is given without a component (the
        message lists the arrays it holds), the component does not exist, the OME-Zarr metadata
        is unusable or has a time axis longer than 1, or the array is empty or of a non-numeric
        dtype.
    """
    import dask.array as da
    import zarr

    if isinstance(source, da.Array):
        _reject_component(component, "a dask array")
        return _checked(InputSource(source, "dask array", None, None, False))
    if isinstance(source, zarr.Array):
        _reject_component(component, "a zarr array")
        root = _local_root(source)
        name = _display_name(Path(root), source.path) if root else (source.path or "zarr array")
        return _checked(
            InputSource(
                _zarr_to_dask(source), name, root, None, False, source.path if root else None
            )
        )
    if isinstance(source, np.ndarray):
        _reject_component(component, "a NumPy array")
        return _checked(InputSource(da.from_array(source), "numpy array", None, None, False))
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(os.fspath(source)).expanduser(), component)
    raise InvalidInputError(
        f"cannot open an input of type {type(source).__name__}: pass a path (to one of "
        f"{SUPPORTED_INPUTS}), or a zarr, dask or NumPy array"
    )


def _reject_component(component: str | None, what: str) -> None:
    if component is not None:
        raise InvalidInputError(
            f"component={component!r} only applies to paths; the input is already {what}"
        )


def _checked(source: InputSource) -> InputSource:
    """``source`` after checking its dtype and that it is not empty (no data read)."""
    array = source.array
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "biuf":
        raise InvalidInputError(
            f"{source.name}: dtype {dtype} is not supported: use a boolean, integer or "
            "floating-point array"
        )
    if array.ndim == 0 or 0 in array.shape:
        raise InvalidInputError(f"{source.name}: input is empty (shape {tuple(array.shape)})")
    return source


def _node_kind(directory: Path) -> str | None:
    """``"array"``, ``"group"`` or ``None`` (not a zarr node), from the metadata files only."""
    if (directory / ".zarray").is_file():
        return "array"
    if (directory / ".zgroup").is_file():
        return "group"
    meta = directory / "zarr.json"
    if meta.is_file():
        try:
            kind = json.loads(meta.read_text(encoding="utf-8")).get("node_type")
        except (OSError, ValueError, AttributeError):
            return None
        return kind if kind in ("array", "group") else None
    return None


def _store_root(directory: Path) -> Path:
    """The topmost directory of the chain of zarr groups that contains the node ``directory``."""
    root = directory
    while root.parent != root and _node_kind(root.parent) == "group":
        root = root.parent
    return root


def _display_name(root: Path, inner: str) -> str:
    return f"{root.name}/{inner}" if inner else root.name


def _join(*parts: str) -> str:
    """Join store paths, dropping empty and ``"."`` parts."""
    pieces = [q for p in parts for q in p.split("/") if q not in ("", ".")]
    return "/".join(pieces)


def _open_path(path: Path, component: str | None) -> InputSource:
    import zarr
    from zarr.storage import LocalStore

    path = path.absolute()
    if component is not None and ".." in component.replace("\\", "/").split("/"):
        raise InvalidInputError(
            f"component={component!r} must be a path inside the store, without '..'"
        )
    if not path.exists():
        # a path into a store whose last parts do not exist: report the missing component
        ancestor = path.parent
        while ancestor.parent != ancestor and not ancestor.exists():
            ancestor = ancestor.parent
        if _node_kind(ancestor) is not None:
            root = _store_root(ancestor)
            missing = _join(path.relative_to(root).as_posix(), component or "")
            raise InvalidInputError(
                f"{root}: the zarr store has no array or group {missing!r}{_candidates_hint(root)}"
            )
        raise InvalidInputError(f"{path}: no such file or directory")
    if not path.is_dir():
        return _open_file(path, component)
    if _node_kind(path) is None:
        raise InvalidInputError(
            f"{path} is not a zarr store: it is a directory without zarr metadata "
            f"(.zarray, .zgroup or zarr.json); supported inputs are {SUPPORTED_INPUTS}"
        )
    root = _store_root(path)
    inner = _join(path.relative_to(root).as_posix(), component or "")
    try:
        store = LocalStore(str(root), read_only=True)
        node = zarr.open(store=store, mode="r")
    except Exception as error:  # any failure to parse metadata is a bad input
        raise InvalidInputError(f"{root}: cannot open the zarr store ({error})") from error
    if inner:
        if isinstance(node, zarr.Array):
            raise InvalidInputError(
                f"{root} is a zarr array, not a group: it has no component {inner!r}"
            )
        try:
            node = node[inner]
        except KeyError:
            raise InvalidInputError(
                f"{root}: the zarr store has no array or group {inner!r}{_candidates_hint(root)}"
            ) from None
    if isinstance(node, zarr.Array):
        return _from_array_node(node, root, inner, store)
    return _from_group_node(node, root, inner)


def _open_file(path: Path, component: str | None) -> InputSource:
    """A ``.npy`` file (memory-mapped, read lazily) or an image file (read whole)."""
    import dask.array as da

    if component is not None:
        raise InvalidInputError(
            f"component={component!r} only applies to zarr stores, not to the file {path}"
        )
    if path.suffix.lower() == ".npy":
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise InvalidInputError(f"cannot read {path} as a .npy array: {error}") from error
        # chunks are read lazily from the (read-only) memory map
        return _checked(
            InputSource(da.from_array(data, chunks="auto"), path.name, str(path), None, False)
        )
    import warnings

    from skimage import io as skio

    try:
        with warnings.catch_warnings():  # imageio's plugin probing warns about old plugins
            warnings.simplefilter("ignore", DeprecationWarning)
            data = np.asarray(skio.imread(str(path)))
    except Exception as error:  # imageio/tifffile raise many types for unreadable files
        raise InvalidInputError(
            f"cannot read {path} as an image ({type(error).__name__}: {error}); supported inputs "
            f"are {SUPPORTED_INPUTS}"
        ) from error
    return _checked(InputSource(da.from_array(data), path.name, str(path), None, False))


def _from_group_node(group: Any, root: Path, inner: str) -> InputSource:
    multiscales = _multiscales(group)
    name = _display_name(root, inner)
    if multiscales is None:
        candidates = _list_candidates(root / inner if inner else root)
        if candidates:
            listed = ", ".join(repr(c) for c in candidates[:_MAX_LISTED])
            if len(candidates) > _MAX_LISTED:
                listed += f", ... ({len(candidates)} in all)"
            raise InvalidInputError(
                f"{name} is a zarr group, not an image: it holds {listed}; pass "
                "component='...' or the array's path"
            )
        raise InvalidInputError(f"{name} is a zarr group that holds no arrays")
    axes, dataset = _parse_multiscales(multiscales, name)
    try:
        array = group[dataset]
    except KeyError:
        raise InvalidInputError(
            f"{name}: the OME-Zarr image's level 0 ({dataset!r}) is missing from the store"
        ) from None
    import zarr

    if not isinstance(array, zarr.Array):
        raise InvalidInputError(
            f"{name}: the OME-Zarr image's level 0 ({dataset!r}) is not an array"
        )
    return _ome_source(array, axes, name, root, _join(inner, dataset))


def _from_array_node(array: Any, root: Path, inner: str, store: Any) -> InputSource:
    import zarr

    name = _display_name(root, inner)
    # an array that is one of the levels of an OME-Zarr image gets that image's axes
    parts = inner.split("/") if inner else []
    for cut in range(len(parts) - 1, -1, -1):
        group_path, rel = "/".join(parts[:cut]), "/".join(parts[cut:])
        try:
            group = zarr.open_group(store=store, path=group_path, mode="r")
        except Exception:  # not a group: keep walking up
            continue
        multiscales = _multiscales(group)
        if multiscales is None:
            continue
        datasets = multiscales[0].get("datasets")
        datasets = datasets if isinstance(datasets, list) else []
        paths = [str(d.get("path", "")).strip("/") for d in datasets if isinstance(d, dict)]
        if rel in paths:
            axes, _ = _parse_multiscales(multiscales, name)
            return _ome_source(array, axes, name, root, inner)
    return _checked(InputSource(_zarr_to_dask(array), name, str(root), None, False, inner))


def _multiscales(group: Any) -> list[dict[str, Any]] | None:
    """The NGFF ``multiscales`` list of a group (0.4: top level; 0.5: under ``"ome"``), or None."""
    try:
        attrs = group.attrs.asdict()
    except Exception:  # unreadable attributes: not OME
        return None
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        value = ome["multiscales"]
    else:
        value = attrs.get("multiscales")
    if value is None:
        return None
    if not isinstance(value, list) or not value or not isinstance(value[0], dict):
        raise InvalidInputError(
            f"{group.store_path}: the OME-Zarr 'multiscales' metadata is not a non-empty list "
            "of objects"
        )
    return value


def _parse_multiscales(multiscales: list[dict[str, Any]], name: str) -> tuple[list[dict], str]:
    """Axes (as ``{"name", "type"}`` dicts) and level-0 dataset path of the first multiscale."""
    first = multiscales[0]
    datasets = first.get("datasets")
    if (
        not isinstance(datasets, list)
        or not datasets
        or not isinstance(datasets[0], dict)
        or ("path" not in datasets[0])
    ):
        raise InvalidInputError(f"{name}: the OME-Zarr multiscales metadata lists no datasets")
    raw_axes = first.get("axes")
    axes: list[dict] = []
    if raw_axes is not None:
        if not isinstance(raw_axes, list):
            raise InvalidInputError(f"{name}: the OME-Zarr 'axes' metadata is not a list")
        for axis in raw_axes:
            if isinstance(axis, str):  # NGFF 0.3: axis names only
                axis = {"name": axis, "type": _AXIS_TYPES.get(axis.lower())}
            if not isinstance(axis, dict):
                raise InvalidInputError(f"{name}: unreadable OME-Zarr axis {axis!r}")
            axis_type = axis.get("type") or _AXIS_TYPES.get(str(axis.get("name", "")).lower())
            axes.append({"name": str(axis.get("name", "?")), "type": axis_type})
    return axes, str(datasets[0]["path"]).strip("/")


def _ome_source(array: Any, axes: list[dict], name: str, root: Path, inner: str) -> InputSource:
    """An InputSource of an OME-Zarr level, with its axes squeezed as the module docstring says."""
    data = _zarr_to_dask(array)
    shape = tuple(int(s) for s in array.shape)
    if not axes:  # NGFF < 0.3: implicitly (t, c, z, y, x), last ones
        default = [("t", "time"), ("c", "channel"), ("z", "space"), ("y", "space"), ("x", "space")]
        axes = (
            [{"name": n, "type": t} for n, t in default[5 - len(shape) :]]
            if len(shape) <= 5
            else []
        )
    if len(axes) != len(shape):
        raise InvalidInputError(
            f"{name}: the OME-Zarr metadata lists {len(axes)} axes but the array has shape {shape}"
        )
    channel = [i for i, a in enumerate(axes) if a["type"] == "channel"]
    if len(channel) > 1:
        raise InvalidInputError(f"{name}: the OME-Zarr metadata lists more than one channel axis")
    space = [i for i, a in enumerate(axes) if a["type"] == "space"]
    keep: list[int] = []
    for i, (axis, size) in enumerate(zip(axes, shape, strict=True)):
        if axis["type"] == "channel":
            keep.append(i)
        elif axis["type"] == "space":
            if size == 1 and len(space) > 2:
                space.remove(i)  # a flat z (or y, x) of a 2D image written as 3D
            else:
                keep.append(i)
        elif size != 1:
            if axis["type"] == "time":
                raise InvalidInputError(
                    f"{name} is a time series ({size} time points on axis {axis['name']!r}); "
                    "select a time point first and fit that array"
                )
            raise InvalidInputError(
                f"{name}: axis {axis['name']!r} of type {axis['type']!r} has length {size}; "
                "only space and channel axes (and axes of length 1) are supported"
            )
    index = tuple(slice(None) if i in keep else 0 for i in range(len(shape)))
    if len(keep) < len(shape):
        data = data[index]
    channel_axis = keep.index(channel[0]) if channel else None
    return _checked(InputSource(data, name, str(root), channel_axis, True, inner))


def _zarr_to_dask(array: Any) -> dask.array.Array:
    import dask.array as da

    chunks = tuple(int(c) for c in array.chunks)
    shards = getattr(array, "shards", None)
    if shards is not None:
        nbytes = math.prod(int(s) for s in shards) * np.dtype(array.dtype).itemsize
        if nbytes <= _MAX_SHARD_BYTES:
            chunks = tuple(int(s) for s in shards)
    return da.from_zarr(array, chunks=chunks)


def _local_root(array: Any) -> str | None:
    """Root directory of a zarr array's store if it is a local directory store, else None."""
    root = getattr(array.store, "root", None)
    return str(root) if isinstance(root, Path) else None


def _list_candidates(directory: Path, prefix: str = "", depth: int = 4) -> list[str]:
    """Paths (relative to ``directory``) of the arrays and OME-Zarr images below it.

    Walks the filesystem, never descending into arrays or OME-Zarr images, so chunk files are
    never listed.
    """
    found: list[str] = []
    if depth == 0:
        return found
    try:
        children = sorted(p for p in directory.iterdir() if p.is_dir())
    except OSError:
        return found
    for child in children:
        kind = _node_kind(child)
        path = _join(prefix, child.name)
        if kind == "array":
            found.append(path)
        elif kind == "group":
            if _is_ome_dir(child):
                found.append(path)
            else:
                found.extend(_list_candidates(child, path, depth - 1))
        if len(found) > 100:
            break
    return found


def _is_ome_dir(directory: Path) -> bool:
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        try:
            content = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if key is not None:
            content = content.get(key, {}) if isinstance(content, dict) else {}
        if isinstance(content, dict) and (
            "multiscales" in content or "multiscales" in (content.get("ome") or {})
        ):
            return True
    return False


def _candidates_hint(root: Path) -> str:
    candidates = _list_candidates(root)
    if not candidates:
        return ""
    listed = ", ".join(repr(c) for c in candidates[:_MAX_LISTED])
    if len(candidates) > _MAX_LISTED:
        listed += ", ..."
    return f" (it holds {listed})"
