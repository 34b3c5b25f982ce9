"""Quantisation of block banks: the grid, exact round trips, zigzag codes and their limits."""

import numpy as np
import pytest
import torch

from napari_miner.core.mlp_bank import init_bank, layer_sizes, pack_bank
from napari_miner.core.quantize import (
    FIRST_LAYER_EXTRA_BITS,
    SCALE_CODE_LIMIT,
    ZERO_SCALE,
    code_limits,
    decode_bank,
    decode_packed,
    encode_bank,
    encode_packed,
    fake_quantize,
    layer_levels,
    psnr_ceiling,
    quantize_layer,
    scale_values,
)


def _bank(n=5, width=12, seed=0):
    """A bank of ``n`` MLPs, with random (non-zero) biases as after training."""
    generator = torch.Generator().manual_seed(seed)
    weights, biases = init_bank(n, 2, width, 2, 3, 20.0, generator, torch.device("cpu"))
    biases = [0.1 * torch.randn(b.shape, generator=generator) for b in biases]
    return weights, biases


@pytest.mark.parametrize("bits", [4, 6, 7, 8, 12, 16])
def test_quantised_banks_round_trip_exactly(bits):
    weights, biases = fake_quantize(*_bank(), bits)
    integers, codes = encode_bank(weights, biases, bits)
    assert all(c.dtype == np.int16 for c in codes)
    decoded = decode_bank(integers, codes)
    for expected, got in zip(
        [t for pair in zip(weights, biases, strict=True) for t in pair], decoded, strict=True
    ):
        assert torch.equal(expected, got)  # bit for bit: what was evaluated is what is stored
    for layer, (w, b) in enumerate(zip(integers[::2], integers[1::2], strict=True)):
        levels = layer_levels(bits, layer)
        largest = np.abs(w).reshape(len(w), -1).max(axis=1)  # the largest weight sets the scale,
        assert bool((largest <= levels).all())  # a power of 2**(1/16): at most 4 % coarser
        assert bool((largest >= np.floor(levels * 2 ** (-1 / 16))).all())
        assert int(np.abs(b).max()) <= levels
    # the scales are the smallest powers of 2**(1/16) with max |w| <= levels * scale
    amax = weights[1].abs().flatten(1).amax(1).numpy()
    scales = scale_values(codes[2])
    assert bool((amax <= layer_levels(bits, 1) * scales).all())
    assert bool((amax > layer_levels(bits, 1) * scales * 2 ** (-1 / 16) * 0.999).all())


def test_the_first_layer_gets_more_bits_and_each_block_its_own_scale():
    assert layer_levels(7, 0) == 2 ** (7 + FIRST_LAYER_EXTRA_BITS - 1) - 1
    assert layer_levels(7, 1) == layer_levels(7, 3) == 63
    assert layer_levels(16, 0) == 2**15 - 1  # never above 16 bits
    weights, biases = _bank(n=2)
    weights[1][1] *= 100  # block 1's layer 1 is much larger: its own scale, same relative grid
    qw, qb = quantize_layer(weights[1], biases[1], 7, 1)
    integers, codes = encode_bank([qw], [qb], 7)  # (as if layer 0: 11 bits)
    assert codes[0][1] - codes[0][0] == round(16 * np.log2(100))


def test_a_decoded_bank_encodes_to_the_same_integers_and_scale_codes():
    weights, biases = fake_quantize(*_bank(), 6)
    integers, codes = encode_bank(weights, biases, 6)
    decoded = decode_bank(integers, codes)
    again, again_codes = encode_bank(decoded[0::2], decoded[1::2], 6)
    for a, b in zip(integers + codes, again + again_codes, strict=True):
        np.testing.assert_array_equal(a, b)


def test_zero_layers_and_scale_code_range():
    weights, biases = _bank(n=3)
    biases[2] = torch.zeros_like(biases[2])
    qw, qb = fake_quantize(weights, biases, 7)
    _, codes = encode_bank(qw, qb, 7)
    assert (codes[5] == ZERO_SCALE).all()
    assert scale_values(np.array([ZERO_SCALE, 0, 16, -16])).tolist() == [0.0, 1.0, 2.0, 0.5]
    with pytest.raises(ValueError, match="out of range"):
        scale_values(np.array([SCALE_CODE_LIMIT + 1]))
    tiny = [w * 1e-30 for w in weights]  # below the smallest scale: stored as zeros
    assert all(not q.any() for q in fake_quantize(tiny, biases, 7)[0])


def test_rounding_error_shrinks_with_bits():
    weights, biases = _bank()
    errors = []
    for bits in (4, 6, 8, 10):
        qw, _ = fake_quantize(weights, biases, bits)
        errors.append(
            max(float((q - w).abs().max()) for q, w in zip(qw[1:], weights[1:], strict=True))
        )
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 30


def test_float_weights_are_refused_by_the_encoder():
    weights, biases = _bank()
    with pytest.raises(ValueError, match="not quantised to 7 bits"):
        encode_bank(weights, biases, 7)


def test_packed_codes_round_trip_with_zigzag_and_limits():
    bits, sizes = 7, layer_sizes(2, 12, 2, 3)
    weights, biases = fake_quantize(*_bank(), bits)
    packed = pack_bank(weights, biases).numpy()
    packed = np.concatenate([packed, np.zeros((1, packed.shape[1]), np.float32)])  # no MLP
    codes, scales = encode_packed(packed, sizes, bits)
    assert codes.dtype == np.uint16 and scales.dtype == np.int16
    assert scales.shape == (6, 2 * len(sizes))
    assert (scales[-1] == ZERO_SCALE).all() and not codes[-1].any()
    np.testing.assert_array_equal(decode_packed(codes, scales, sizes), packed)
    limits = code_limits(sizes, bits)
    assert limits.shape == (packed.shape[1],)
    assert bool((codes <= limits).all())
    assert limits[0] == 2 * layer_levels(bits, 0) and limits[-1] == 2 * 63
    # zigzag: small integers of either sign have small codes
    values = np.round(packed[:-1, -3:] / scale_values(scales[:-1, -1:])).astype(int)  # biases
    expected = np.where(values >= 0, 2 * values, -2 * values - 1)
    np.testing.assert_array_equal(codes[:-1, -3:], expected)


def test_psnr_ceiling_grows_about_6_db_per_bit():
    assert psnr_ceiling(7) == 50.0 and psnr_ceiling(8) - psnr_ceiling(7) == 6.0
