import numpy as np
import pytest

from napari_miner.core.errors import InvalidInputError
from napari_miner.core.layout import InputLayout, inspect_input


def test_rgb_is_detected_like_napari():
    layout = inspect_input(np.zeros((10, 12, 3), np.uint8))
    assert layout.rgb and layout.channel_axis == 2 and layout.spatial_shape == (10, 12)
    assert not inspect_input(np.zeros((10, 12, 3)), rgb=False).rgb  # a thin volume then
    assert inspect_input(np.zeros((10, 12, 3)), rgb=False).spatial_shape == (10, 12, 3)


def test_channel_axis_moves_channels():
    data = np.random.default_rng(0).random((5, 16, 20)).astype(np.float32)
    layout = inspect_input(data, channel_axis=0)
    assert layout.n_channels == 5 and layout.spatial_shape == (16, 20)
    tensor = layout.normalize(data)
    assert tuple(tensor.shape) == (5, 16, 20)
    np.testing.assert_allclose(layout.denormalize(tensor), data, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_round_trip_keeps_dtype_and_values(dtype):
    rng = np.random.default_rng(0)
    data = (rng.random((9, 11)) * 200 - (50 if np.dtype(dtype).kind != "u" else 0)).astype(dtype)
    layout = inspect_input(data)
    tensor = layout.normalize(data)
    assert float(tensor.min()) == 0.0 and float(tensor.max()) == 1.0
    back = layout.denormalize(tensor)
    assert back.dtype == data.dtype
    np.testing.assert_allclose(back, data, rtol=1e-6, atol=1e-4)


def test_denormalize_clips_to_the_input_range():
    data = np.array([[10, 20], [30, 40]], np.uint8)
    layout = inspect_input(data)
    back = layout.denormalize(layout.normalize(data) * 3 - 1)
    assert back.min() == 10 and back.max() == 40


def test_layout_dict_round_trip():
    layout = inspect_input(np.zeros((10, 12, 4), np.uint16))
    assert InputLayout.from_dict(layout.to_dict()) == layout


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (np.zeros(10), {}, "at least 2-dimensional"),
        (np.zeros((0, 5)), {}, "empty"),
        (np.array([[1.0, np.nan]]), {}, "NaN"),
        (np.array([[1.0, np.inf]]), {}, "NaN or infinite"),
        (np.zeros((3, 3), complex), {}, "dtype"),
        (np.array([["a", "b"]]), {}, "dtype"),
        (np.zeros((2, 3, 4, 5, 6)), {}, "channel_axis"),
        (np.zeros((5, 6)), {"rgb": True}, "rgb=True"),
        (np.zeros((5, 6)), {"channel_axis": 4}, "out of range"),
    ],
)
def test_bad_input_is_explained(data, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        inspect_input(data, **kwargs)
