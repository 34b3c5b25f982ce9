"""Show the pyramid levels of a fitted MINER model as napari Image layers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

    from napari_miner import MinerModel


def level_layer_name(name: str, level: int) -> str:
    """Return the name of the layer that shows pyramid ``level`` of ``name``."""
    return f"{name} · MINER level {level}"


def level_transform(level: int, ndim: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return ``(scale, translate)`` that places a level's pixels in full-resolution space.

    Pixel ``i`` of level ``j`` summarises full-resolution pixels ``i*2**j ... (i+1)*2**j - 1``,
    whose centre is ``i*2**j + (2**j - 1)/2``. napari puts data pixel ``i`` at world
    ``i*scale + translate``, so ``scale = 2**j`` and ``translate = (2**j - 1)/2`` per spatial
    axis line the level's pixel centres up with the input layer's.
    """
    factor = float(2**level)
    return (factor,) * ndim, ((factor - 1.0) / 2.0,) * ndim


def add_level_layers(
    viewer: napari.Viewer, model: MinerModel, name: str, **kwargs: Any
) -> list[Image]:
    """Add one Image layer per pyramid level of ``model`` to ``viewer``.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer to add the layers to.
    model : MinerModel
        A fitted model (``n_levels``, ``decode(level=j)``, ``level_shape(j)``, ``is_rgb``
        and ``value_range`` are used).
    name : str
        Base name; layers are named ``f"{name} · MINER level {j}"``.
    **kwargs
        Extra keyword arguments for :meth:`napari.Viewer.add_image` (e.g. ``visible``).

    Returns
    -------
    list of napari.layers.Image
        The layers, indexed by level: ``layers[0]`` is the full-resolution reconstruction.
        Coarser levels are added first so that level 0 ends up on top.
    """
    lo, hi = (float(v) for v in model.value_range)
    if not hi > lo:  # a constant image: napari needs a non-empty contrast range
        hi = lo + 1.0
    layers: dict[int, Image] = {}
    for level in reversed(range(model.n_levels)):
        data = model.decode(level=level)
        ndim = len(model.level_shape(level))
        scale, translate = level_transform(level, ndim)
        layers[level] = viewer.add_image(
            data,
            name=level_layer_name(name, level),
            rgb=bool(model.is_rgb),
            scale=scale,
            translate=translate,
            contrast_limits=(lo, hi),
            **kwargs,
        )
    return [layers[level] for level in range(model.n_levels)]
