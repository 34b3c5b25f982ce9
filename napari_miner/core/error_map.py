"""Error maps of a fit's estimates, on a fixed scale: per pixel against the level's target, or per block.

Both are the root mean square over channels of the estimate's error, in percent of the input's value
range (normalised units × 100), so that maps of different levels and times compare directly on the
fixed range ``0 .. ERROR_RANGE_PERCENT``. :class:`LevelTargets` holds the targets of an in-memory input
(the same area pyramid the fit trains on) for per-pixel maps; without them (an out-of-core fit), the
per-block errors that training reports (:class:`~napari_miner.core.block_state.BlockReport`) give a
per-block map (:func:`error_percent` of their MSE).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .layout import InputLayout
from .pyramid import area_downsample

__all__ = ["ERROR_RANGE_PERCENT", "MAX_PIXEL_ERROR_VALUES", "LevelTargets", "error_percent"]

ERROR_RANGE_PERCENT = 5.0
"""The fixed display range of error maps: 0 to this percentage of the input's value range."""

MAX_PIXEL_ERROR_VALUES = 1 << 27
"""Largest input (values, channels included) whose per-pixel error maps are computed: its targets
are kept in memory as float32 beside the fit's own."""


def error_percent(mse: np.ndarray) -> np.ndarray:
    """Root of a mean squared error in normalised units, in percent of the value range (float32)."""
    return (100.0 * np.sqrt(np.asarray(mse, dtype=np.float32))).astype(np.float32, copy=False)


class LevelTargets:
    """The targets of an in-memory input's pyramid levels, for per-pixel error maps.

    The normalised input and its area-downsampled levels are computed on the CPU when first needed
    (the rule of :func:`~napari_miner.core.pyramid.gaussian_targets`, level by level).

    Parameters
    ----------
    data : numpy.ndarray
        The fitted input, laid out as ``layout`` says.
    layout : InputLayout
        Its layout.
    """

    def __init__(self, data: np.ndarray, layout: InputLayout) -> None:
        self._data: np.ndarray | None = data
        self.layout = layout
        self._targets: dict[int, torch.Tensor] = {}

    @classmethod
    def of(cls, data: Any, layout: InputLayout) -> LevelTargets | None:
        """Targets of ``data``, or ``None`` if it is not a NumPy array or is too large."""
        if not isinstance(data, np.ndarray) or data.size > MAX_PIXEL_ERROR_VALUES:
            return None
        return cls(data, layout)

    def target(self, level: int) -> torch.Tensor:
        """The normalised ``(C, *spatial)`` target of ``level``."""
        if level not in self._targets:
            if not self._targets:
                assert self._data is not None
                self._targets[0] = self.layout.normalize(self._data)
                self._data = None
            current = max(j for j in self._targets if j <= level)  # level 0 is never released
            while current < level:
                self._targets[current + 1] = area_downsample(self._targets[current])
                current += 1
        return self._targets[level]

    def error(self, level: int, decoded: np.ndarray) -> np.ndarray:
        """Per-pixel error map (``(*spatial)`` float32, % of range) of ``level`` decoded as ``decoded``.

        ``decoded`` is laid out like the input (the level's shape), as the model decodes it.
        """
        values = self.layout.normalize(decoded)
        mse = (values - self.target(level)).square_().mean(dim=0)
        return error_percent(mse.numpy())

    def release(self, level: int) -> None:
        """Forget the targets coarser than ``level`` (the fit went on to it)."""
        for j in [j for j in self._targets if j > level]:
            del self._targets[j]
