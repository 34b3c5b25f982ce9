"""Input layout and normalisation: from a user's array to a ``(C, *spatial)`` float tensor and back.

Layouts follow napari: 2D ``(Y, X)``, RGB(A) ``(Y, X, 3|4)``, volumes ``(Z, Y, X)``; an explicit
``channel_axis`` (or ``rgb``) resolves ambiguity. Values are mapped linearly so that the input's minimum
is 0 and its maximum is 1; every error threshold and PSNR is relative to that value range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import InvalidInputError


@dataclass(frozen=True)
class InputLayout:
    """How the input array maps onto the internal ``(C, *spatial)`` representation.

    Attributes
    ----------
    shape : tuple of int
        Shape of the input array.
    dtype : str
        NumPy dtype of the input (``numpy.dtype(...).str`` form, e.g. ``"|u1"``).
    channel_axis : int or None
        Axis of the input holding channels, or ``None`` for a single-channel signal.
    rgb : bool
        Whether the channels are RGB(A) colour.
    value_min, value_max : float
        Input value range, mapped to [0, 1] internally.
    """

    shape: tuple[int, ...]
    dtype: str
    channel_axis: int | None
    rgb: bool
    value_min: float
    value_max: float

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes, in order."""
        return tuple(s for i, s in enumerate(self.shape) if i != self.channel_axis)

    @property
    def n_channels(self) -> int:
        """Number of channels (1 without a channel axis)."""
        return 1 if self.channel_axis is None else self.shape[self.channel_axis]

    @property
    def value_scale(self) -> float:
        """Width of the value range (1 for a constant input)."""
        span = self.value_max - self.value_min
        return span if span > 0 else 1.0

    def normalize(self, data: np.ndarray) -> torch.Tensor:
        """Map an array of this layout to a normalised float32 ``(C, *spatial)`` tensor."""
        array = np.asarray(data)
        if self.channel_axis is None:
            array = array[np.newaxis]
        else:
            array = np.moveaxis(array, self.channel_axis, 0)
        values = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        return (values - self.value_min) / self.value_scale

    def denormalize(self, values: torch.Tensor) -> np.ndarray:
        """Map a normalised ``(C, *spatial)`` tensor back to the input's dtype, range and axis order."""
        dtype = np.dtype(self.dtype)
        array = values.detach().to("cpu", torch.float64).numpy() * self.value_scale + self.value_min
        array = np.clip(array, self.value_min, self.value_max)
        if dtype.kind == "b":
            array = array >= 0.5
        elif dtype.kind in "iu":
            array = np.rint(array)
        array = array.astype(dtype, copy=False)
        if self.channel_axis is None:
            return array[0]
        return np.moveaxis(array, 0, self.channel_axis)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary."""
        return dict(
            shape=list(self.shape),
            dtype=self.dtype,
            channel_axis=self.channel_axis,
            rgb=self.rgb,
            value_min=self.value_min,
            value_max=self.value_max,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InputLayout:
        """Inverse of :meth:`to_dict`."""
        return cls(
            shape=tuple(int(s) for s in values["shape"]),
            dtype=str(values["dtype"]),
            channel_axis=None if values["channel_axis"] is None else int(values["channel_axis"]),
            rgb=bool(values["rgb"]),
            value_min=float(values["value_min"]),
            value_max=float(values["value_max"]),
        )


def inspect_input(
    data: Any, rgb: bool | None = None, channel_axis: int | None = None
) -> InputLayout:
    """Validate an input array and work out its layout and value range.

    Parameters
    ----------
    data : array-like
        NumPy, dask or zarr array (anything with ``shape``, ``dtype`` and ``__array__``).
    rgb : bool, optional
        Force (``True``) or forbid (``False``) reading a last axis of length 3 or 4 as RGB(A).
        By default a 3D array whose last axis has length 3 or 4 is RGB(A), as in napari.
    channel_axis : int, optional
        Axis that holds channels (any number of them).

    Raises
    ------
    InvalidInputError
        If the array is empty, not 2D/3D (plus channels), not numeric, or holds NaN or infinity.
    """
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    # validate the layout before reading any value
    layout_of(shape, dtype, 0.0, 0.0, rgb=rgb, channel_axis=channel_axis)
    array = np.asarray(data)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInputError(
            "input contains NaN or infinite values; replace them before fitting"
        )
    return layout_of(
        shape, dtype, float(array.min()), float(array.max()), rgb=rgb, channel_axis=channel_axis
    )


def layout_of(
    shape: tuple[int, ...],
    dtype: Any,
    value_min: float,
    value_max: float,
    *,
    rgb: bool | None = None,
    channel_axis: int | None = None,
) -> InputLayout:
    """The layout of an input of ``shape`` and ``dtype`` whose values span ``[value_min, value_max]``.

    Used directly for inputs too large to read at once (their value range comes from a streamed
    pass); see :func:`inspect_input` for the parameters.

    Raises
    ------
    InvalidInputError
        If the shape is empty or not 2D/3D (plus channels), or the dtype is not numeric.
    """
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise InvalidInputError(
            f"input dtype {dtype} is not supported: use a boolean, integer or floating-point array"
        )
    if len(shape) < 2:
        raise InvalidInputError(f"input must be at least 2-dimensional, got shape {shape}")
    if channel_axis is not None:
        if not -len(shape) <= channel_axis < len(shape):
            raise InvalidInputError(
                f"channel_axis={channel_axis} is out of range for shape {shape}"
            )
        channel_axis %= len(shape)
        is_rgb = bool(rgb) and shape[channel_axis] in (3, 4)
    elif rgb:
        if shape[-1] not in (3, 4):
            raise InvalidInputError(
                f"rgb=True needs a last axis of length 3 or 4, got shape {shape}"
            )
        channel_axis, is_rgb = len(shape) - 1, True
    elif rgb is None and len(shape) == 3 and shape[-1] in (3, 4):
        channel_axis, is_rgb = 2, True
    else:
        is_rgb = False
    spatial = [s for i, s in enumerate(shape) if i != channel_axis]
    if len(spatial) not in (2, 3):
        hint = " (pass channel_axis= for multichannel data)" if len(spatial) > 3 else ""
        raise InvalidInputError(
            f"input must have 2 or 3 spatial dimensions, got shape {shape}{hint}"
        )
    if 0 in shape:
        raise InvalidInputError(f"input is empty (shape {shape})")
    return InputLayout(shape, dtype.str, channel_axis, is_rgb, float(value_min), float(value_max))
