"""Procedural test volumes (importable by the tests)."""

from __future__ import annotations

import numpy as np


def smooth(shape: tuple[int, ...], seed: int = 0, frequency: float = 3.0) -> np.ndarray:
    """A smooth random signal in [-1, 1] (sum of phase-shifted sines along every axis), float64."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    phase = rng.random(len(shape)) * 6
    return sum(np.sin(frequency * g + p) for g, p in zip(grids, phase, strict=True)) / len(shape)


def spheres(n: int, count: int = 6, seed: int = 0) -> np.ndarray:
    """Union of random spheres in an ``n``³ boolean volume."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:n, 0:n, 0:n] / n
    occupied = np.zeros((n, n, n), bool)
    for _ in range(count):
        c = rng.random(3) * 0.6 + 0.2
        r = rng.random() * 0.15 + 0.08
        occupied |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r**2
    return occupied


def torus(shape: tuple[int, int, int], major: float = 0.3, minor: float = 0.12) -> np.ndarray:
    """A torus around the z axis, in a boolean volume of ``shape`` (unit cube coordinates)."""
    z, y, x = (np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]] + 0.5) / np.array(shape)[
        :, None, None, None
    ]
    ring = np.hypot(y - 0.5, x - 0.5) - major
    return ring**2 + (z - 0.5) ** 2 < minor**2


def intensity_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Smooth blobs with a fine texture, float32 in [0, 1]: a microscopy-like intensity volume."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    volume = np.zeros(shape)
    for _ in range(8):
        c = rng.random(3)
        width = rng.random() * 0.1 + 0.05
        volume += np.exp(
            -sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True)) / (2 * width**2)
        )
    volume += 0.05 * np.sin(40 * grids[0]) * np.sin(35 * grids[1]) * np.sin(30 * grids[2])
    volume -= volume.min()
    return (volume / volume.max()).astype(np.float32)


def mixed_image(seed: int = 0):
    """Left half smooth (easy), right half noise (hard), 64x64, as a ``(1, 64, 64)`` tensor."""
    import torch

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 64
    image = 0.5 + 0.3 * np.sin(2 * np.pi * y) * np.cos(np.pi * x)
    image[:, 32:] = rng.random((64, 32))
    return torch.from_numpy(image.astype(np.float32))[None]
