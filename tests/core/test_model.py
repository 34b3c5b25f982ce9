import numpy as np
import pytest
import torch

import napari_miner as nm
from napari_miner.core.config import MinerConfig
from napari_miner.core.errors import InvalidInputError


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:75, 0:93]
    image = np.stack(
        [np.sin(y / 7.0) * np.cos(x / 5.0), rng.random((75, 93)), np.hypot(y - 30, x - 40) / 60], -1
    )
    image = (image - image.min()) / np.ptp(image)
    config = MinerConfig(n_levels=3, block_size=8, max_steps=15)
    return nm.fit(image.astype(np.float32), config, device="cpu")


def test_decode_shapes_follow_the_levels(model):
    assert model.decode(0).shape == (75, 93, 3)
    assert model.decode(1).shape == (38, 47, 3)
    assert model.decode(2).shape == (19, 24, 3)
    assert model.decoded_shape(1) == (38, 47, 3)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_region_decode_equals_the_slice_of_a_full_decode(model, level):
    full = model.decode_normalized(level)
    h, w = full.shape[1:]
    rng = np.random.default_rng(level)
    for _ in range(6):
        y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
        y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
        part = model.decode_normalized(level, (slice(y0, y1), slice(x0, x1)))
        torch.testing.assert_close(part, full[:, y0:y1, x0:x1], atol=1e-6, rtol=0)


def test_region_accepts_open_and_negative_slices(model):
    np.testing.assert_array_equal(
        model.decode(0, (slice(None), slice(-10, None))), model.decode(0)[:, -10:]
    )


def test_decode_returns_input_dtype_and_range(model):
    decoded = model.decode(0)
    assert decoded.dtype == np.float32
    low, high = model.value_range
    assert decoded.min() >= low and decoded.max() <= high


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": 3}, "level"),
        ({"level": -1}, "level"),
        ({"region": (slice(0, 5),)}, "2 slices"),
        ({"region": (slice(5, 5), slice(0, 3))}, "empty"),
        ({"region": (slice(0, 5, 2), slice(0, 3))}, "step"),
        ({"region": (3, slice(0, 3))}, "slices"),
    ],
)
def test_bad_decode_requests_are_explained(model, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        model.decode(**kwargs)


def test_gather_memory_follows_the_query_not_the_grid(model):
    level = model.levels[0]
    ids = level.block_ids[:3]
    present, weights, _ = level.gather(torch.cat([ids, torch.tensor([10**12])]))
    assert present.tolist() == [True, True, True, False]
    assert weights[0].shape[0] == 3
    for got, expected in zip(weights, level.weights, strict=True):
        assert torch.equal(got, expected[:3])
