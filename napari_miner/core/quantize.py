"""Quantisation of block banks: weights on a grid of a few bits, one scale per block and layer.

A bank quantised with ``bits`` holds, in every layer of every MLP, weights that are integer multiples
of that layer's scale: ``W = k * s_W`` and ``b = k * s_b`` with integers ``|k| <= L`` where
``L = 2**(bits - 1) - 1``. The first layer, which the SIREN frequency ``omega_0`` multiplies, gets
:data:`FIRST_LAYER_EXTRA_BITS` more bits: its errors are amplified by the sine.

A scale is a power of ``2**(1/16)``: ``s = 2**(c / 16)`` for an integer *scale code* ``c``, the
smallest such that ``max |W| <= L * s``. It costs two bytes in a store instead of four and is the
same number on every machine (:func:`scale_values` reads it from one table); it makes the grid at
most ``2**(1/16)`` (4 %) coarser than ``max |W| / L``. A layer that is all zeros has the scale code
:data:`ZERO_SCALE`.

A store keeps the integers and the scale codes (:func:`encode_bank`, :func:`encode_packed`), and
decoding gets back exactly the weights that were trained and evaluated (:func:`decode_bank`,
:func:`decode_packed`). Training quantises each bank when it is trained (:func:`fake_quantize`),
layer by layer with a short fine-tune of the layers still in float when rounding at once costs more
than the budget (:func:`~napari_miner.core.bank_fit.fine_tune_quantized`).
"""

from __future__ import annotations

import numpy as np
import torch

from .mlp_bank import Params

__all__ = [
    "FIRST_LAYER_EXTRA_BITS",
    "SCALE_CODE_LIMIT",
    "ZERO_SCALE",
    "code_limits",
    "decode_bank",
    "decode_packed",
    "encode_bank",
    "encode_packed",
    "fake_quantize",
    "layer_levels",
    "psnr_ceiling",
    "quantize_layer",
    "scale_values",
]

FIRST_LAYER_EXTRA_BITS = 1
"""The first layer's weights get this many more bits than the others (at most 16)."""
SCALE_STEPS = 16
"""Scale codes per octave: a scale is ``2**(code / SCALE_STEPS)``."""
SCALE_CODE_LIMIT = 64 * SCALE_STEPS
"""Scale codes lie in ``[-SCALE_CODE_LIMIT, SCALE_CODE_LIMIT]``: scales from ``2**-64`` to
``2**64`` (a layer whose weights are all below ``2**-64`` is stored as zeros)."""
ZERO_SCALE = -(1 << 15)
"""The scale code of a layer that is all zeros (and of blocks without an MLP)."""
_TABLE = np.exp2(
    np.arange(-SCALE_CODE_LIMIT, SCALE_CODE_LIMIT + 1, dtype=np.float64) / SCALE_STEPS
).astype(np.float32)


def layer_levels(bits: int, layer: int) -> int:
    """Largest integer of layer ``layer`` at ``bits`` bits: ``2**(b - 1) - 1``."""
    b = min(bits + FIRST_LAYER_EXTRA_BITS, 16) if layer == 0 else bits
    return (1 << (b - 1)) - 1


def psnr_ceiling(bits: int) -> float:
    """The PSNR (dB) above which weights of ``bits`` bits cannot be expected to go.

    Uniform rounding of a layer's weights to ``bits`` bits adds about 6 dB of error per bit
    removed; measured on default-sized MLPs, 8 bits leave about 56 dB. A target above this cannot
    be reached at that bit depth.
    """
    return 6.0 * bits + 8.0


def scale_values(codes: np.ndarray) -> np.ndarray:
    """The float32 scales of scale codes (0 for :data:`ZERO_SCALE`).

    Raises
    ------
    ValueError
        If a code is neither :data:`ZERO_SCALE` nor within :data:`SCALE_CODE_LIMIT`.
    """
    codes = np.asarray(codes, dtype=np.int64)
    zero = codes == ZERO_SCALE
    index = np.where(zero, 0, codes) + SCALE_CODE_LIMIT
    if index.size and (index.min() < 0 or index.max() > 2 * SCALE_CODE_LIMIT):
        raise ValueError("a scale code is out of range")
    return np.where(zero, np.float32(0), _TABLE[index])


def _scale_table(device: torch.device) -> torch.Tensor:
    return torch.from_numpy(_TABLE).to(device)


def _blocks_max(tensor: torch.Tensor) -> torch.Tensor:
    """``max |x|`` of every block (over every dimension but the first)."""
    return tensor.detach().abs().flatten(1).amax(dim=1)


def _scale_codes(amax: torch.Tensor, levels: int) -> torch.Tensor:
    """The smallest scale code whose scale ``s`` has ``amax <= levels * s``, per block."""
    table = _scale_table(amax.device)
    ratio = amax.double() / levels
    tiny = ratio < float(_TABLE[0])
    code = torch.ceil(SCALE_STEPS * torch.log2(torch.where(tiny, 1.0, ratio)))
    code = code.clamp(-SCALE_CODE_LIMIT, SCALE_CODE_LIMIT).long()
    below = table[code + SCALE_CODE_LIMIT].double() < ratio  # log2 rounding: one code up
    code = (code + below.long()).clamp(max=SCALE_CODE_LIMIT)
    return torch.where(tiny, ZERO_SCALE, code)


def _values(codes: torch.Tensor, ndim: int) -> torch.Tensor:
    """Scales of per-block scale codes, shaped to broadcast over a tensor of ``ndim`` dims."""
    table = _scale_table(codes.device)
    zero = codes == ZERO_SCALE
    scale = torch.where(zero, 0.0, table[torch.where(zero, 0, codes) + SCALE_CODE_LIMIT])
    return scale.reshape(-1, *([1] * (ndim - 1)))


def _on_grid(tensor: torch.Tensor, scale: torch.Tensor, levels: int) -> torch.Tensor:
    """The integers ``k`` of ``tensor`` on the grid ``scale`` (0 where the scale is 0)."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, torch.round(tensor / safe).clamp(-levels, levels), 0.0)


def _quantized(tensor: torch.Tensor, levels: int) -> torch.Tensor:
    """``tensor`` rounded to the grid of its blocks' scale codes (see the module docstring)."""
    t = tensor.detach()
    scale = _values(_scale_codes(_blocks_max(t), levels), t.ndim).to(t.dtype)
    return _on_grid(t, scale, levels) * scale


def quantize_layer(
    weight: torch.Tensor, bias: torch.Tensor, bits: int, layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer`` of a bank (weights and biases) rounded to its grid of ``bits`` bits."""
    levels = layer_levels(bits, layer)
    return _quantized(weight, levels), _quantized(bias, levels)


def fake_quantize(weights: Params, biases: Params, bits: int) -> tuple[Params, Params]:
    """The bank with every layer rounded to its grid (see the module docstring)."""
    out_w, out_b = [], []
    for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
        qw, qb = quantize_layer(w, b, bits, layer)
        out_w.append(qw)
        out_b.append(qb)
    return out_w, out_b


def _encode(tensor: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Integers and scale codes of a tensor on its grid, or ``None`` if it is not on one.

    The grid of quantised weights is found again from their largest value: the scale code that
    produced them, or one of its neighbours (rounding can lower the largest value by up to one
    code).
    """
    t = tensor.detach().cpu().float()
    base = _scale_codes(_blocks_max(t), levels)
    codes = torch.full_like(base, ZERO_SCALE)
    integers = torch.zeros_like(t)
    found = (base == ZERO_SCALE) & (t.flatten(1) == 0).all(dim=1)
    for step in (0, 1, -1, 2):
        candidate = torch.where(base == ZERO_SCALE, base, base + step)
        candidate = candidate.clamp(min=-SCALE_CODE_LIMIT) if step < 0 else candidate
        candidate = torch.where(candidate > SCALE_CODE_LIMIT, base, candidate)
        scale = _values(candidate, t.ndim)
        k = _on_grid(t, scale, levels)
        exact = ((k * scale == t).flatten(1).all(dim=1) & (scale.flatten() > 0)) & ~found
        codes = torch.where(exact, candidate, codes)
        integers[exact] = k[exact]
        found |= exact
    return (integers, codes) if bool(found.all()) else None


def encode_bank(
    weights: Params, biases: Params, bits: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Integers and scale codes of a quantised bank, per layer: weights first, then biases.

    Returns ``(integers, codes)``: per layer ``k`` of the ``n`` MLPs, ``integers[2k]`` (the
    weights, int16 ``(n, out, in)``) and ``integers[2k + 1]`` (the biases), and the matching
    ``(n,)`` int16 scale codes.

    Raises
    ------
    ValueError
        If the weights do not lie on the grid of ``bits`` bits (they were not quantised).
    """
    integers, codes = [], []
    for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
        levels = layer_levels(bits, layer)
        for tensor in (w, b):
            encoded = _encode(tensor, levels)
            if encoded is None:
                raise ValueError(f"layer {layer} of the bank is not quantised to {bits} bits")
            k, code = encoded
            integers.append(k.to(torch.int16).numpy())
            codes.append(code.to(torch.int16).numpy())
    return integers, codes


def decode_bank(integers: list[np.ndarray], codes: list[np.ndarray]) -> list[torch.Tensor]:
    """Inverse of :func:`encode_bank`: the float32 weights and biases, alternating per layer."""
    out = []
    for k, c in zip(integers, codes, strict=True):
        t = torch.from_numpy(np.asarray(k, dtype=np.float32))
        scale = torch.from_numpy(scale_values(c))
        out.append(t * scale.reshape(-1, *([1] * (t.ndim - 1))))
    return out


def _segments(sizes: list[tuple[int, int]]) -> np.ndarray:
    """The scale index of every value of a packed MLP (see ``mlp_bank.pack_bank``).

    Layer ``k``'s weights use scale ``2k``, its biases ``2k + 1``.
    """
    index = []
    for k, (n_out, n_in) in enumerate(sizes):
        index += [2 * k] * (n_out * n_in) + [2 * k + 1] * n_out
    return np.asarray(index)


def encode_packed(
    params: np.ndarray, sizes: list[tuple[int, int]], bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Packed quantised MLPs ``(n, P)`` as uint16 codes ``(n, P)`` and int16 scale codes ``(n, S)``.

    The integers are zigzag-coded (0, -1, 1, -2, ... become 0, 1, 2, 3, ...), so that small
    integers of either sign have small codes whose high bits are zero: an entropy coder with bit
    shuffle then spends nothing on them. ``S`` is two scales per layer (weights, biases). Rows of
    zeros (blocks without an MLP) get :data:`ZERO_SCALE`.

    Raises
    ------
    ValueError
        If the values do not lie on the grid of ``bits`` bits.
    """
    from .mlp_bank import unpack_bank

    weights, biases = unpack_bank(torch.from_numpy(np.ascontiguousarray(params)), sizes)
    integers, codes = encode_bank(weights, biases, bits)
    n = params.shape[0]
    packed = np.concatenate([k.reshape(n, -1) for k in integers], axis=1).astype(np.int32)
    zigzag = (packed << 1) ^ (packed >> 31)
    return zigzag.astype(np.uint16), np.stack(codes, axis=1).astype(np.int16)


def code_limits(sizes: list[tuple[int, int]], bits: int) -> np.ndarray:
    """The largest valid code of every value of a packed MLP (:func:`encode_packed`).

    A code above it (or a scale code out of range) can only come from a damaged store:
    :func:`decode_packed` would turn it into weights the fit never had.
    """
    segment = _segments(sizes)
    return np.asarray([2 * layer_levels(bits, int(k) // 2) for k in segment], dtype=np.int64)


def decode_packed(
    integers: np.ndarray, scale_codes: np.ndarray, sizes: list[tuple[int, int]]
) -> np.ndarray:
    """Inverse of :func:`encode_packed`: the float32 packed MLPs from the codes."""
    codes = integers.astype(np.int32)
    values = (codes >> 1) ^ -(codes & 1)
    scales = scale_values(scale_codes)
    return values.astype(np.float32) * scales[..., _segments(sizes)]
