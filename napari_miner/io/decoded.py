"""Decoded levels on disk: one level of a model, or a region of it, written to a file.

:func:`write_decoded` decodes a level (or a region of it) and writes it, atomically, in the format
that the output's name ends with (see :data:`DECODED_FORMATS`):

* ``.npy`` — a NumPy array (``numpy.load`` reads it; never pickled);
* ``.png`` — a 2D image of ``uint8``/``uint16`` values (booleans as 0/255);
* ``.tif``/``.tiff`` — any dtype (booleans as 0/1 ``uint8``), a volume as a multi-page TIFF;
* ``.zarr`` — a zarr array, decoded chunk by chunk from :meth:`MinerModel.as_pyramid`, so the
  level is never held in memory whole.

The values are those of ``model.decode(level, region)``: the input's dtype, value range and axis
order. The output is written to a hidden temporary sibling and renamed into place
(:mod:`napari_miner.io.atomic`), so it never holds a half-written level.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import ConfigError
from .atomic import atomic_directory, atomic_file, output_path

if TYPE_CHECKING:
    from ..core.model import PyramidModel

__all__ = ["DECODED_FORMATS", "check_decoded_path", "write_decoded"]

DECODED_FORMATS = (".npy", ".png", ".tif", ".tiff", ".zarr")
"""Output formats of :func:`write_decoded`, by file name extension."""


def check_decoded_path(path: str | PathLike[str]) -> str:
    """The format (lower-case suffix, one of :data:`DECODED_FORMATS`) that ``path`` names.

    Raises
    ------
    ConfigError
        If the suffix is not one of :data:`DECODED_FORMATS`.
    """
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in DECODED_FORMATS:
        raise ConfigError(
            f"cannot tell the format of {os.fspath(path)}: name it with one of "
            f"{', '.join(DECODED_FORMATS)}"
        )
    return suffix


def write_decoded(
    model: PyramidModel,
    path: str | PathLike[str],
    level: int = 0,
    region: Sequence[slice] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Decode ``level`` of ``model`` (or a region of it) and write it to ``path``, atomically.

    Parameters
    ----------
    model : MinerModel
        The fitted model.
    path : str or os.PathLike
        Output file; its extension picks the format (see the module docstring).
    level : int
        Pyramid level (0 = full resolution).
    region : sequence of slice, optional
        One slice per spatial axis, in pixels of ``level`` (the channel axis is always whole);
        bounds may be left out or negative, as in Python. Default: the whole level.
    overwrite : bool
        Replace an existing ``path`` (only once the new output is complete).

    Returns
    -------
    pathlib.Path
        The absolute path written.

    Raises
    ------
    ConfigError
        If the extension is not a known format, ``level`` or ``region`` is out of range, or the
        format cannot hold the decoded values (``.png``: 2D images of ``uint8``/``uint16`` only).
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    ModelFormatError
        If ``path`` is the store the model is read from.
    FileNotFoundError
        If the parent directory of ``path`` does not exist.
    """
    suffix = check_decoded_path(path)
    target = output_path(path, overwrite, "decoded level")
    _check_not_the_store(model, target)
    if not isinstance(level, int | np.integer) or not 0 <= level < model.n_levels:
        raise ConfigError(
            f"level {level!r} is out of range: the model has levels 0 to {model.n_levels - 1}"
        )
    bounds = _bounds(model, int(level), region)
    if suffix == ".zarr":
        _write_zarr(model, int(level), bounds, target)
        return target
    values = model.decode(int(level), region=bounds)
    if suffix == ".npy":
        with atomic_file(target) as temporary, open(temporary, "wb") as handle:
            np.save(handle, values, allow_pickle=False)
        return target
    values = _image_values(values, suffix, len(model.layout.spatial_shape))
    from skimage import io as skio

    with atomic_file(target) as temporary:
        skio.imsave(str(temporary), values, check_contrast=False)
    return target


def _check_not_the_store(model: PyramidModel, target: Path) -> None:
    from ..core.errors import ModelFormatError
    from .stored_level import StoredLevel

    for level in model.levels:
        if isinstance(level, StoredLevel) and Path(level.store.path) == target:
            raise ModelFormatError(f"cannot write to {target}: the model is read from it")


def _bounds(model: PyramidModel, level: int, region: Sequence[slice] | None) -> tuple[slice, ...]:
    """``region`` with explicit, non-negative bounds inside ``level`` (the whole level if None)."""
    shape = model.level_shape(level)
    if region is None:
        return tuple(slice(0, side) for side in shape)
    if len(region) != len(shape) or not all(isinstance(r, slice) for r in region):
        raise ConfigError(
            f"region must be {len(shape)} slices (one per spatial axis), got {region!r}"
        )
    bounds = []
    for axis, (part, side) in enumerate(zip(region, shape, strict=True)):
        if part.step not in (None, 1):
            raise ConfigError(f"region slice {part} on axis {axis} has a step; use step 1")
        start, stop, _ = part.indices(side)
        if not start < stop:
            raise ConfigError(
                f"region slice {part} on axis {axis} is empty or outside the level's 0:{side}"
            )
        bounds.append(slice(start, stop))
    return tuple(bounds)


def _image_values(values: np.ndarray, suffix: str, n_spatial: int) -> np.ndarray:
    """``values`` ready for an image file (booleans as integers); refuse what ``.png`` cannot hold."""
    if suffix == ".png":
        colour = values.ndim == 3 and values.shape[-1] in (3, 4)
        if n_spatial != 2 or not (values.ndim == 2 or colour):
            raise ConfigError(
                ".png holds 2D images (grey, RGB or RGBA); this model decodes arrays of shape "
                f"{values.shape}: use .tif, .npy or .zarr"
            )
        if values.dtype.kind == "b":
            return values.astype(np.uint8) * 255
        if values.dtype not in (np.uint8, np.uint16):
            raise ConfigError(
                f".png holds 8- or 16-bit unsigned integers; this model decodes {values.dtype}: "
                "use .tif, .npy or .zarr"
            )
    elif values.dtype.kind == "b":
        return values.astype(np.uint8)
    return values


def _write_zarr(model: PyramidModel, level: int, bounds: tuple[slice, ...], target: Path) -> None:
    """Decode chunk by chunk into a zarr array (with dask's current scheduler)."""
    from .lazy import dask_pyramid  # what MinerModel.as_pyramid() returns

    array = dask_pyramid(model)[level]
    index: list[slice] = list(bounds)
    if model.layout.channel_axis is not None:
        index.insert(model.layout.channel_axis, slice(None))
    array = array[tuple(index)]
    if not all(_regular(sizes) for sizes in array.chunks):  # a region that cuts chunks
        array = array.rechunk(array.chunksize)  # zarr needs equal chunks (but the last)
    with atomic_directory(target) as temporary:
        array.to_zarr(str(temporary), overwrite=True)


def _regular(sizes: tuple[int, ...]) -> bool:
    return len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]
