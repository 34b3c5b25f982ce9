"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from skimage import data


def load_image(name: str) -> np.ndarray:
    """The benchmark images: ``astronaut``, ``retina`` (top-left 1280×1280 crop) and ``camera``."""
    if name == "astronaut":
        return data.astronaut()
    if name == "retina":
        return np.ascontiguousarray(data.retina()[:1280, :1280])
    if name == "camera":
        return data.camera()
    raise SystemExit(f"unknown image {name!r}")


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
