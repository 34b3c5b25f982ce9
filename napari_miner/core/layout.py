"""Input layout and normalisation: from a user's array to a ``(C, *spatial)`` float tensor and back.

Layouts follow napari: 2D ``(Y, X)``, RGB(A) ``(Y, X, 3|4)``, volumes ``(Z, Y, X)``; an explicit
``channel_axis`` (or ``rgb``) resolves ambiguity. Values are mapped linearly so that the input's minimum
is 0 and its maximum is 1; every error threshold and PSNR is relative to that value range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import InvalidInputError


@dataclass(frozen=True)
class InputLayout:
    """How the input array maps onto the internal ``(C, *spatial)`` representation.

    The constructor checks every invariant (and raises :class:`InvalidInputError`), so a layout
    read from a store is as trustworthy as one worked out from an array.

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

    def __post_init__(self) -> None:
        problems = _layout_problems(self)
        if problems:
            raise InvalidInputError(f"invalid input layout: {'; '.join(problems)}")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes, in order."""
        return tuple(s for i, s in enumerate(self.shape) if i != self.channel_axis)

    @property
    def n_channels(self) -> int:
        """Number of channels (1 without a channel axis)."""
        return 1 if self.channel_axis is None else self.shape[self.channel_axis]

    @property
    def is_volume(self) -> bool:
        """Whether the signal has three spatial axes (a volume, with or without channels)."""
        return len(self.spatial_shape) == 3

    @property
    def value_scale(self) -> float:
        """Width of the value range (1 for a constant input)."""
        span = self.value_max - self.value_min
        return span if span > 0 else 1.0

    def normalize_values(self, values: np.ndarray) -> np.ndarray:
        """Map values (any axis order) to float32 ``(x - value_min) / value_scale``.

        Computed in float32 for inputs that float32 holds exactly (8/16-bit integers, float16/32),
        in float64 otherwise, so that large 32/64-bit integers and float64 values beyond float32's
        range are mapped without overflow.
        """
        precision = np.result_type(np.dtype(self.dtype), np.float32)
        array = np.asarray(values, dtype=precision)
        return ((array - precision.type(self.value_min)) / precision.type(self.value_scale)).astype(
            np.float32, copy=False
        )

    def normalize(self, data: np.ndarray) -> torch.Tensor:
        """Map an array of this layout to a normalised float32 ``(C, *spatial)`` tensor."""
        array = np.asarray(data)
        if self.channel_axis is None:
            array = array[np.newaxis]
        else:
            array = np.moveaxis(array, self.channel_axis, 0)
        return torch.from_numpy(np.ascontiguousarray(self.normalize_values(array)))

    def denormalize(self, values: torch.Tensor, continuous: bool = False) -> np.ndarray:
        """Map a normalised ``(C, *spatial)`` tensor back to the input's dtype, range and axis order.

        With ``continuous``, the values stay float32 (in the input's value range, not rounded to
        its dtype): e.g. for smooth iso surfaces of an occupancy volume.
        """
        if continuous:
            array = values.detach().to("cpu", torch.float32).numpy()
            array = array * np.float32(self.value_scale) + np.float32(self.value_min)
            array = np.clip(array, self.value_min, self.value_max).astype(np.float32, copy=False)
        elif np.dtype(self.dtype).kind in "iu" and np.dtype(self.dtype).itemsize <= 4:
            array = self._denormalize_integers(values)
        else:
            array = values.detach().to("cpu", torch.float64).numpy() * self.value_scale
            array = np.clip(array + self.value_min, self.value_min, self.value_max)
            array = cast_values(array, np.dtype(self.dtype))
        if self.channel_axis is None:
            return array[0]
        return np.moveaxis(array, 0, self.channel_axis)

    def _denormalize_integers(self, values: torch.Tensor) -> np.ndarray:
        """:func:`cast_values` of the denormalised values for integers of up to 32 bits, in torch.

        The same float64 arithmetic (scale, shift, clip, round half to even), in one pass per
        operation and on every core: decoding spends much of its time here otherwise.
        """
        dtype = np.dtype(self.dtype)
        array = values.detach().to("cpu", torch.float64) * self.value_scale
        array = array.add_(self.value_min).clamp_(self.value_min, self.value_max).round_()
        wide = torch.int64 if dtype == np.uint32 else torch.int32
        return array.to(_TORCH_INTEGERS.get(dtype, wide)).numpy().astype(dtype, copy=False)

    @property
    def rounding_mse(self) -> float:
        """Mean squared error that rounding to the input's dtype adds, in normalised units.

        A uniform rounding error of one integer step: ``1 / (12 * value_scale**2)``; 0 for float
        inputs (booleans, thresholded rather than rounded, are left out too).
        """
        if np.dtype(self.dtype).kind not in "iu":
            return 0.0
        return 1.0 / (12.0 * self.value_scale**2)

    def as_decoded(self, values: torch.Tensor) -> torch.Tensor:
        """Normalised values as :meth:`denormalize` will return them, still normalised.

        Clipped to the value range and, for integer and boolean inputs, rounded to the input's
        dtype: what a decoded level holds, so that errors measured on it are those of the decode.
        """
        clipped = values.clamp(0.0, 1.0)
        kind = np.dtype(self.dtype).kind
        if kind == "b":
            return (clipped >= 0.5).to(values.dtype)
        if kind not in "iu":
            return clipped
        scale, low = self.value_scale, self.value_min
        levels = torch.round(clipped.double() * scale + low)
        return ((levels - low) / scale).to(values.dtype)

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
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        InvalidInputError
            If a key is missing or a value has the wrong type or is out of range.
        """
        if not isinstance(values, dict):
            raise InvalidInputError(f"a layout must be a JSON object, got {type(values).__name__}")
        missing = {"shape", "dtype", "channel_axis", "rgb", "value_min", "value_max"} - set(values)
        if missing:
            raise InvalidInputError(f"layout is missing {sorted(missing)}")
        shape, axis = values["shape"], values["channel_axis"]
        if not isinstance(shape, list) or not all(_is_int(s) for s in shape):
            raise InvalidInputError(f"layout shape must be a list of integers, got {shape!r}")
        if axis is not None and not _is_int(axis):
            raise InvalidInputError(f"layout channel_axis must be an integer, got {axis!r}")
        for key in ("value_min", "value_max"):
            if not isinstance(values[key], int | float) or isinstance(values[key], bool):
                raise InvalidInputError(f"layout {key} must be a number, got {values[key]!r}")
        if not isinstance(values["dtype"], str) or not isinstance(values["rgb"], bool):
            raise InvalidInputError("layout dtype must be a string and rgb a boolean")
        return cls(
            shape=tuple(shape),
            dtype=values["dtype"],
            channel_axis=axis,
            rgb=values["rgb"],
            value_min=float(values["value_min"]),
            value_max=float(values["value_max"]),
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _layout_problems(layout: InputLayout) -> list[str]:
    """What is wrong with a layout (empty when it is valid)."""
    try:
        dtype = np.dtype(layout.dtype)
    except TypeError:
        return [f"unknown dtype {layout.dtype!r}"]
    problems = []
    if dtype.kind not in "biuf" or dtype.str != layout.dtype:
        problems.append(f"dtype {layout.dtype!r} is not a boolean, integer or float dtype string")
    shape = layout.shape
    if not all(_is_int(s) and 0 < s < 2**40 for s in shape):
        problems.append(f"shape {shape} must hold positive sizes")
    axis = layout.channel_axis
    if axis is not None and not (_is_int(axis) and 0 <= axis < len(shape)):
        problems.append(f"channel_axis {axis!r} is out of range for shape {shape}")
        axis = None
    spatial = len(shape) - (axis is not None)
    if spatial not in (2, 3):
        problems.append(f"shape {shape} must have 2 or 3 spatial axes")
    elif axis is not None and shape[axis] > 4096:
        problems.append(f"{shape[axis]} channels is more than 4096")
    if layout.rgb and (axis is None or shape[axis] not in (3, 4)):
        problems.append("rgb needs a channel axis of length 3 or 4")
    low, high = layout.value_min, layout.value_max
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        problems.append(f"value range [{low}, {high}] is not a finite interval")
    elif not math.isfinite(high - low):
        problems.append(f"value range [{low}, {high}] is wider than float64 can represent")
    return problems


_TORCH_INTEGERS = {
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int32): torch.int32,
}
"""Integer dtypes that torch holds as they are (the others go through a wider one)."""


def cast_values(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert float values to ``dtype``: booleans at 0.5, integers rounded and saturated.

    The one rule for turning computed values into the input's dtype. 64-bit integers saturate at
    their limits instead of wrapping around (``float64`` cannot hold ``2**63 - 1``).
    """
    if dtype.kind == "b":
        return values >= 0.5
    if dtype.kind not in "iu":
        return values.astype(dtype, copy=False)
    values = np.rint(values)
    if dtype.itemsize < 8:
        return values.astype(dtype)
    info = np.iinfo(dtype)
    top, bottom = values >= float(info.max), values <= float(info.min)
    out = np.where(top | bottom, 0.0, values).astype(dtype)
    out[top], out[bottom] = info.max, info.min
    return out


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
