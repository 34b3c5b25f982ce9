"""napari reader for ``*.miner.zarr`` model stores: a lazily decoded multiscale image and its overlay."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from napari_miner.io.schema import SUFFIX

LayerData = tuple[Any, dict[str, Any], str]


def _is_model_path(path: Any) -> bool:
    if not isinstance(path, str | os.PathLike):
        return False
    return os.fspath(path).rstrip("/\\").lower().endswith(SUFFIX)


def stem(path: str | os.PathLike[str]) -> str:
    """File name of ``path`` without the ``.miner.zarr`` suffix."""
    name = os.path.basename(os.fspath(path).rstrip("/\\"))
    return name[: -len(SUFFIX)] if name.lower().endswith(SUFFIX) else name


def get_reader(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_models` if ``path`` (or every path of a list) ends in ``.miner.zarr``."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if paths and all(_is_model_path(p) for p in paths):
        return read_models
    return None


def read_models(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[LayerData]:
    """Layer data tuples for one or more model stores (see :func:`model_layer_data`).

    Raises
    ------
    napari_miner.ModelFormatError
        If a store is missing, unreadable or of an unsupported version (napari shows the message).
    """
    from napari_miner import load

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        layers += model_layer_data(load(p), stem(p))
    return layers


def model_layer_data(model: Any, name: str) -> list[LayerData]:
    """The lazy multiscale image of ``model`` and its active-block overlay, as layer data tuples.

    Parameters
    ----------
    model : MinerModel
        A fitted model.
    name : str
        Base name: the layers are ``"<name> · MINER"`` and ``"<name> · MINER active blocks"``.
    """
    from napari_miner.core.overlay import active_block_labels

    lo, hi = (float(v) for v in model.value_range)
    if not hi > lo:  # a constant image: napari needs a non-empty contrast range
        hi = lo + 1.0
    image_kwargs: dict[str, Any] = {
        "name": f"{name} · MINER",
        "multiscale": True,
        "rgb": bool(model.is_rgb),
        "contrast_limits": [lo, hi],
    }
    layout = model.layout
    if layout.channel_axis is not None and not model.is_rgb:
        image_kwargs["channel_axis"] = layout.channel_axis
    labels, scale, translate = active_block_labels(model)
    labels_kwargs = {
        "name": f"{name} · MINER active blocks",
        "scale": scale,
        "translate": translate,
        "opacity": 0.4,
    }
    return [
        (model.as_pyramid(), image_kwargs, "image"),
        (labels, labels_kwargs, "labels"),
    ]
