"""Laplacian pyramid operations for 2D and 3D signals.

Signals are torch tensors shaped ``(C, *spatial)`` with 2 or 3 spatial dimensions. Level ``j`` of a
pyramid has spatial shape ``ceil(shape / 2**j)``: odd sides are padded by edge replication before the
2×2 (2×2×2) area average, so no pixel is ever dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

_INTERP_MODE = {2: "bilinear", 3: "trilinear"}
_AVG_POOL = {2: F.avg_pool2d, 3: F.avg_pool3d}


def level_shapes(shape: Sequence[int], n_levels: int) -> list[tuple[int, ...]]:
    """Spatial shapes of the pyramid levels, level 0 first."""
    shapes = [tuple(int(s) for s in shape)]
    for _ in range(1, n_levels):
        shapes.append(tuple(math.ceil(s / 2) for s in shapes[-1]))
    return shapes


def _check_spatial(x: torch.Tensor) -> int:
    ndim = x.ndim - 1
    if ndim not in _INTERP_MODE:
        raise ValueError(
            f"expected a (C, *spatial) tensor with 2 or 3 spatial dims, got {tuple(x.shape)}"
        )
    return ndim


def area_downsample(x: torch.Tensor) -> torch.Tensor:
    """Halve every spatial side by 2×2 (2×2×2) box averaging; odd sides are edge-padded first."""
    ndim = _check_spatial(x)
    pad: list[int] = []
    for s in reversed(x.shape[1:]):
        pad += [0, s % 2]
    batch = x.unsqueeze(0)
    if any(pad):
        batch = F.pad(batch, pad, mode="replicate")
    return _AVG_POOL[ndim](batch, kernel_size=2).squeeze(0)


def area_downsample_array(array: np.ndarray, spatial_axes: Sequence[int]) -> np.ndarray:
    """:func:`area_downsample` of a NumPy array along ``spatial_axes`` (2 or 3 of them), as float32.

    The other axes (channels) are kept. Used on chunks of lazily computed pyramids: an odd side is
    edge-padded, which equals padding the whole array as long as only the array's last chunk along
    an axis has an odd side.
    """
    spatial = [int(a) % array.ndim for a in spatial_axes]
    others = [a for a in range(array.ndim) if a not in spatial]
    moved = np.transpose(array, others + spatial)
    head = moved.shape[: len(others)]
    x = torch.from_numpy(np.ascontiguousarray(moved, dtype=np.float32))
    out = area_downsample(x.reshape(-1, *moved.shape[len(others) :])).numpy()
    out = out.reshape(*head, *out.shape[1:])
    return np.transpose(out, np.argsort(others + spatial))


def upsample(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Upsample ×2 (bi/trilinear, ``align_corners=False``) and crop to ``shape``."""
    ndim = _check_spatial(x)
    up = F.interpolate(x.unsqueeze(0), scale_factor=2, mode=_INTERP_MODE[ndim], align_corners=False)
    crop = (slice(None), slice(None)) + tuple(slice(0, int(s)) for s in shape)
    return up[crop].squeeze(0)


def gaussian_targets(x: torch.Tensor, n_levels: int) -> list[torch.Tensor]:
    """Area-downsampled copies of ``x``: the target of every level, level 0 (``x`` itself) first."""
    targets = [x]
    for _ in range(1, n_levels):
        targets.append(area_downsample(targets[-1]))
    return targets


def laplacian_residuals(targets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Residual of every level given exact coarser levels; the coarsest "residual" is its target."""
    residuals = [t - upsample(targets[j + 1], t.shape[1:]) for j, t in enumerate(targets[:-1])]
    return residuals + [targets[-1]]


def reconstruct(residuals: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum the upsampled levels of a Laplacian pyramid back into the level-0 signal."""
    estimate = residuals[-1]
    for residual in reversed(residuals[:-1]):
        estimate = upsample(estimate, residual.shape[1:]) + residual
    return estimate


def halo_bounds(
    bounds: Sequence[tuple[int, int]], parent_shape: Sequence[int]
) -> list[tuple[int, int]]:
    """The coarser level's pixels that ×2 upsampling over ``bounds`` reads: under them, plus one.

    Half-open ranges per axis, clipped to ``parent_shape``.
    """
    return [
        (max(lo // 2 - 1, 0), min(-(-hi // 2) + 1, int(s)))
        for (lo, hi), s in zip(bounds, parent_shape, strict=True)
    ]


def upsampled_region(
    read_parent: Callable[[list[tuple[int, int]]], torch.Tensor],
    parent_shape: Sequence[int],
    bounds: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """The ×2 upsampled coarser level over ``bounds`` (half-open pixel ranges of the finer level).

    ``read_parent(parent_bounds)`` returns the coarser level's ``(C, *spatial)`` values over
    ``parent_bounds``: the region under ``bounds`` plus a one-pixel halo (clipped at the edges),
    which is what bilinear/trilinear upsampling needs for the result to equal the same crop of the
    whole level upsampled.
    """
    parent_bounds = halo_bounds(bounds, parent_shape)
    parent = read_parent(parent_bounds)
    up = upsample(parent, [2 * (hi - lo) for lo, hi in parent_bounds])
    crop = tuple(
        slice(lo - 2 * plo, hi - 2 * plo)
        for (lo, hi), (plo, _) in zip(bounds, parent_bounds, strict=True)
    )
    return up[(slice(None),) + crop]
