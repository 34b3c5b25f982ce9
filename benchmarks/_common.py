"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from skimage import data

IMAGES = ("astronaut", "camera", "retina", "rocket", "immunohistochemistry")
"""The benchmark images, all bundled with scikit-image (nothing is downloaded)."""

METADATA_FILES = frozenset({".zattrs", ".zgroup", ".zarray", ".zmetadata", "zarr.json"})
"""Names of the JSON metadata files of a zarr v2 or v3 store."""


def load_image(name: str) -> np.ndarray:
    """One of the benchmark images :data:`IMAGES`.

    Parameters
    ----------
    name : str
        ``astronaut`` (512×512 RGB), ``camera`` (512×512 gray), ``retina`` (the top-left
        1280×1280 crop, RGB), ``rocket`` (427×640 RGB) or ``immunohistochemistry`` (512×512 RGB).

    Returns
    -------
    numpy.ndarray
        The uint8 image, ``(Y, X)`` or ``(Y, X, 3)``.
    """
    if name == "retina":
        return np.ascontiguousarray(data.retina()[:1280, :1280])
    if name in IMAGES:
        return getattr(data, name)()
    raise SystemExit(f"unknown image {name!r}: choose from {', '.join(IMAGES)}")


def config_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to settings; values are parsed as JSON when possible."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, _, text = item.partition("=")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides


def folder_size(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def store_breakdown(path: Path) -> dict[str, int]:
    """Bytes of a zarr store by kind: JSON metadata, and the chunks of each array name.

    Parameters
    ----------
    path : Path
        The store's root folder.

    Returns
    -------
    dict of str to int
        ``"metadata"`` (attributes and array/group JSON files) and one entry per array name (the
        folder holding ``.zarray`` or ``zarr.json``; e.g. ``params`` sums ``levels/*/params``),
        largest first. The values add up to :func:`folder_size`.
    """
    root = Path(path)
    sizes: Counter[str] = Counter()
    for file in root.rglob("*"):
        if not file.is_file():
            continue
        if file.name in METADATA_FILES:
            sizes["metadata"] += file.stat().st_size
        else:
            sizes[_array_name(file, root)] += file.stat().st_size
    return dict(sizes.most_common())


def _array_name(chunk: Path, root: Path) -> str:
    """Name of the zarr array a chunk file belongs to (``"other"`` if none)."""
    for folder in chunk.parents:
        if folder == root or root not in folder.parents:
            break
        if (folder / ".zarray").is_file() or (folder / "zarr.json").is_file():
            return folder.name
    return "other"
