"""Export a fitted model as an OME-Zarr multiscale image (decoded pixels, readable by any NGFF tool).

:func:`export_ome_zarr` decodes every pyramid level chunk by chunk (the lazy dask arrays of
:func:`napari_miner.io.lazy.dask_pyramid`) and streams the chunks into an OME-Zarr image written by
ome-zarr-py (:func:`ome_zarr.writer.write_multiscale`), which also writes the NGFF metadata.

Layout of the result (NGFF 0.5 on zarr format 3 by default, or NGFF 0.4 on zarr format 2)::

    image.ome.zarr/
        zarr.json (or .zattrs)   "ome"/"multiscales": axes, datasets with per-level transforms;
                                 "omero": channel colours and value windows (channel images);
                                 "napari_miner": where the pixels came from
        s0/ s1/ ...              level j = the model decoded at 1/2**j resolution

Axis order follows OME: the channel axis, when the input had one (RGB(A) or ``channel_axis``), comes
**first**, then the spatial axes ``(z,) y, x``. An RGB image ``(Y, X, 3)`` is therefore stored as
``(3, Y, X)`` with axes ``c, y, x``. Level ``j`` has ``scale = 2**j`` and
``translation = (2**j - 1) / 2`` on every spatial axis (pixel centres of the ``2**j`` area
average, in level-0 pixels) and ``1``/``0`` on the channel axis.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..core.errors import ConfigError
from .atomic import atomic_directory, output_path

if TYPE_CHECKING:
    import dask.array

    from ..core.model import PyramidModel

__all__ = ["default_chunks", "export_ome_zarr", "ome_pyramid"]

NGFF_VERSIONS = ("0.4", "0.5")
"""OME-Zarr (NGFF) versions :func:`export_ome_zarr` can write."""

_RGB_COLOURS = ("FF0000", "00FF00", "0000FF", "FFFFFF")
_RGB_LABELS = ("red", "green", "blue", "alpha")


def default_chunks(n_spatial: int, chunk: int | Sequence[int]) -> tuple[int, ...]:
    """Chunk sides along the spatial axes for a chunk setting.

    Parameters
    ----------
    n_spatial : int
        Number of spatial axes (2 or 3).
    chunk : int or sequence of int
        An int is the side of square chunks of an image; a volume gets cubes of the largest
        power-of-two side ``s`` with ``s**3 <= chunk**2`` (no more voxels than an image chunk
        has pixels: 64³ for the default 1024). A sequence gives the side along each spatial axis.

    Returns
    -------
    tuple of int
        One side per spatial axis.

    Raises
    ------
    ConfigError
        If a side is not a positive integer or the sequence has the wrong length.
    """
    if isinstance(chunk, bool):
        raise ConfigError(f"chunk must be a positive integer, got {chunk!r}")
    if isinstance(chunk, int):
        if chunk < 1:
            raise ConfigError(f"chunk must be a positive integer, got {chunk!r}")
        if n_spatial <= 2:
            return (chunk,) * n_spatial
        budget = chunk**2
        side = 1
        while (2 * side) ** n_spatial <= budget:
            side *= 2
        return (side,) * n_spatial
    sides = tuple(chunk)
    if len(sides) != n_spatial or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sides
    ):
        raise ConfigError(
            f"chunk needs one positive integer per spatial axis ({n_spatial}), got {chunk!r}"
        )
    return sides


def ome_pyramid(
    model: PyramidModel, chunks: Sequence[int], n_levels: int | None = None
) -> list[dask.array.Array]:
    """The levels to export: lazy dask arrays in OME axis order ``(c,) (z,) y, x``.

    Parameters
    ----------
    model : PyramidModel
        The fitted model.
    chunks : sequence of int
        Chunk side along each spatial axis (see :func:`default_chunks`); the channel axis is one
        chunk.
    n_levels : int, optional
        Number of levels. By default those of :meth:`MinerModel.as_pyramid
        <napari_miner.MinerModel.as_pyramid>`: the model's levels plus 2× downsampled ones until
        the smallest side is at most 512. More levels than the model has are 2× area averages of
        its coarsest level.

    Returns
    -------
    list of dask.array.Array
        Level ``j`` decodes ``model.decode(j)`` (or its downsampling) chunk by chunk, with the
        channel axis moved first.

    Raises
    ------
    ConfigError
        If ``n_levels`` is not between 1 and the number of levels the model's shape allows.
    """
    from .lazy import dask_pyramid

    block = model.config.block_size
    chunk_blocks = [max(1, side // block) for side in chunks]
    if n_levels is None:
        levels = dask_pyramid(model, chunk_blocks=chunk_blocks)
    else:
        if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 1:
            raise ConfigError(f"n_levels must be a positive integer, got {n_levels!r}")
        levels = dask_pyramid(model, chunk_blocks=chunk_blocks, min_side=1)
        if n_levels > len(levels):
            raise ConfigError(
                f"n_levels={n_levels} is too many: a model of shape {tuple(model.shape)} has at "
                f"most {len(levels)} levels (down to one pixel)"
            )
        levels = levels[:n_levels]

    channel_axis = model.layout.channel_axis
    spatial_axes = [a for a in range(levels[0].ndim) if a != channel_axis]
    result = []
    for level in levels:
        target = list(level.chunksize)
        for axis, side in zip(spatial_axes, chunks, strict=True):
            target[axis] = side
        if tuple(target) != level.chunksize:  # chunk not a multiple of the block size
            level = level.rechunk(tuple(target))
        if channel_axis is not None:
            level = level.transpose([channel_axis, *spatial_axes])
        result.append(level)
    return result


def _axes(model: PyramidModel) -> list[dict[str, str]]:
    n_spatial = len(model.layout.spatial_shape)
    axes = [{"name": name, "type": "space"} for name in ("z", "y", "x")[3 - n_spatial :]]
    if model.layout.channel_axis is not None:
        axes.insert(0, {"name": "c", "type": "channel"})
    return axes


def _transformations(model: PyramidModel, n_levels: int) -> list[list[dict[str, Any]]]:
    has_channels = model.layout.channel_axis is not None
    n_spatial = len(model.layout.spatial_shape)
    result = []
    for j in range(n_levels):
        factor = float(2**j)
        scale = [factor] * n_spatial
        translation = [(factor - 1.0) / 2.0] * n_spatial
        if has_channels:
            scale.insert(0, 1.0)
            translation.insert(0, 0.0)
        result.append(
            [
                {"type": "scale", "scale": scale},
                {"type": "translation", "translation": translation},
            ]
        )
    return result


def _json_number(value: float) -> float | int | None:
    value = float(value)
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() else value


def _omero(model: PyramidModel) -> dict[str, Any] | None:
    """Channel colours, names and value windows (so viewers show the channels as fitted)."""
    layout = model.layout
    if layout.channel_axis is None:
        return None
    low, high = (_json_number(v) for v in model.value_range)
    if model.dtype.kind == "b":
        low, high = 0, 1
    window = {"min": low, "max": high, "start": low, "end": high}
    if None in window.values():
        window = None
    channels = []
    for index in range(layout.shape[layout.channel_axis]):
        if layout.rgb:
            channel: dict[str, Any] = {
                "label": _RGB_LABELS[index],
                "color": _RGB_COLOURS[index],
                "active": index < 3,
            }
        else:
            channel = {"label": f"channel {index}", "color": "FFFFFF", "active": True}
        if window is not None:
            channel["window"] = dict(window)
        channels.append(channel)
    rdefs = {"model": "color" if layout.rgb else "greyscale"}
    return {"channels": channels, "rdefs": rdefs}


def _provenance(model: PyramidModel) -> dict[str, Any]:
    """What the pixels are (a decoded MINER model), in plain JSON."""
    info: dict[str, Any] = {
        "source": "napari-miner",
        "model_shape": [int(s) for s in model.shape],
        "model_dtype": model.dtype.str,
        "model_levels": model.n_levels,
        "n_parameters": int(model.n_parameters),
        "value_range": [_json_number(v) for v in model.value_range],
    }
    for key in ("package_version", "input_sha256"):
        value = model.metadata.get(key) if isinstance(model.metadata, dict) else None
        if isinstance(value, str):
            info[key] = value
    return info


def _image_name(target: Path) -> str:
    name = target.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def export_ome_zarr(
    model: PyramidModel,
    path: str | PathLike[str],
    *,
    chunk: int | Sequence[int] = 1024,
    n_levels: int | None = None,
    overwrite: bool = False,
    ngff_version: Literal["0.4", "0.5"] = "0.5",
) -> None:
    """Decode ``model`` into an OME-Zarr multiscale image at ``path``, chunk by chunk.

    Every level is decoded lazily (only the blocks under each chunk) and streamed to disk, so
    memory use is bounded by a few chunks, never the whole image. Chunks are computed by dask's
    current scheduler (threads by default; an active ``dask.distributed`` client is used if there
    is one).

    The channel axis, if the model has one, becomes the **first** axis (OME order
    ``c, z, y, x``): an RGB image ``(Y, X, 3)`` is written as ``(3, Y, X)``. Level ``j`` is
    ``model.decode(j)`` (with that axis order) and carries ``scale = 2**j`` on the spatial axes;
    extra levels beyond the model's are 2× area averages of its coarsest level.

    The image is written to a hidden temporary folder beside ``path`` and renamed into place, so
    ``path`` never holds a half-written image.

    Parameters
    ----------
    model : MinerModel
        The fitted model (e.g. from :func:`napari_miner.fitting` or :func:`napari_miner.load`).
    path : str or os.PathLike
        Directory of the OME-Zarr image, e.g. ``"image.ome.zarr"``.
    chunk : int or sequence of int
        Chunk side in pixels: ``chunk × chunk`` tiles for images, cubes with at most ``chunk**2``
        voxels (power-of-two side: 64³ for 1024) for volumes; or one side per spatial axis.
    n_levels : int, optional
        Number of resolution levels to write (default: those of
        :meth:`~napari_miner.MinerModel.as_pyramid`, down to a smallest side of at most 512).
    overwrite : bool
        Replace an existing ``path`` (only once the new image is complete).
    ngff_version : {"0.5", "0.4"}
        OME-Zarr version: ``"0.5"`` (zarr format 3, default) or ``"0.4"`` (zarr format 2, for
        older readers).

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    ConfigError
        For an invalid ``chunk``, ``n_levels`` or ``ngff_version``.
    FileNotFoundError
        If the parent directory of ``path`` does not exist.
    MinerError
        If decoding fails (e.g. a model store that became unreadable).
    """
    from ..core.model import PyramidModel

    if not isinstance(model, PyramidModel):
        raise TypeError(f"expected a fitted model, got {type(model).__name__}")
    if ngff_version not in NGFF_VERSIONS:
        raise ConfigError(
            f"ngff_version must be one of {', '.join(NGFF_VERSIONS)}, got {ngff_version!r}"
        )
    chunks = default_chunks(len(model.layout.spatial_shape), chunk)
    pyramid = ome_pyramid(model, chunks, n_levels)
    target = output_path(path, overwrite, "OME-Zarr image")

    import zarr

    with warnings.catch_warnings():
        # importing ome_zarr.writer warns about a deprecated class that we do not use (0.18)
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.format import FormatV04, FormatV05
        from ome_zarr.writer import write_multiscale

    fmt = FormatV05() if ngff_version == "0.5" else FormatV04()
    with atomic_directory(target) as temporary:
        group = zarr.open_group(str(temporary), mode="w", zarr_format=fmt.zarr_format)
        omero = _omero(model)
        extra: dict[str, Any] = {"metadata": {"omero": omero}} if omero else {}
        with warnings.catch_warnings():
            # ome-zarr >= 0.17 deprecates explicit transformations in favour of deriving them from
            # shape ratios, which are not exactly 2**j for odd sides; MINER levels are exact 2x
            warnings.filterwarnings(
                "ignore", message=".*coordinate_transformations.*", category=DeprecationWarning
            )
            write_multiscale(
                pyramid,
                group,
                fmt=fmt,
                axes=_axes(model),
                coordinate_transformations=_transformations(model, len(pyramid)),
                name=_image_name(target),
                compute=True,
                **extra,
            )
        group.attrs["napari_miner"] = _provenance(model)
