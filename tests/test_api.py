import numpy as np
import pytest
import torch
from miner_test_data import smooth
from skimage import data

import napari_miner as nm
from napari_miner.core.metrics import psnr

SMALL = nm.MinerConfig(n_levels=2, block_size=8, max_steps=40)


def test_camera_reaches_35_db():
    image = data.camera()
    model = nm.fit(image, nm.MinerConfig(max_steps=200, target_psnr=36.0), device="cpu")
    decoded = model.decode()
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    assert psnr(image, decoded, data_range=255) >= 35.0


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(np.uint8, 255), (np.uint16, 4000), (np.int32, 1e6), (np.float32, 1.0), (np.float64, 5.0)],
)
def test_decode_keeps_dtype_and_value_range(dtype, scale):
    image = ((smooth((40, 56)) + 1) / 2 * scale).astype(dtype)
    model = nm.fit(image, SMALL, device="cpu")
    decoded = model.decode()
    assert decoded.dtype == image.dtype and decoded.shape == image.shape
    assert decoded.min() >= image.min() and decoded.max() <= image.max()
    assert psnr(image, decoded) > 25


def test_rgba_and_multichannel_layouts():
    rgba = (np.stack([smooth((33, 47), s) for s in range(4)], -1) * 100 + 120).astype(np.uint8)
    model = nm.fit(rgba, SMALL, device="cpu")
    assert model.is_rgb and model.decode().shape == (33, 47, 4)
    assert model.decode(1).shape == (17, 24, 4)
    channels = np.stack([smooth((33, 47), s) for s in range(5)]).astype(np.float32)
    model = nm.fit(channels, SMALL, device="cpu", channel_axis=0)
    assert not model.is_rgb and model.decode().shape == (5, 33, 47)
    assert psnr(channels, model.decode()) > 25


def test_volume_decodes_to_the_exact_shape():
    volume = smooth((19, 23, 17)).astype(np.float32)
    model = nm.fit(
        volume, nm.MinerConfig.for_volume(n_levels=2, block_size=8, max_steps=20), device="cpu"
    )
    assert model.decode().shape == (19, 23, 17)
    assert model.decode(1).shape == (10, 12, 9)


def test_closing_fit_iter_cancels_and_keeps_a_valid_partial_model():
    image = data.camera()[::4, ::4]
    run = nm.fit_iter(
        image, nm.MinerConfig(n_levels=3, max_steps=400, progress_every=5), device="cpu"
    )
    levels_seen = set()
    for event in run:
        if isinstance(event, nm.Progress):
            levels_seen.add(event.level)
            if event.level == 1 and event.step >= 10:
                break
    run.close()
    with pytest.raises(StopIteration):
        next(run)
    model = run.model
    assert levels_seen == {2, 1}
    assert model.levels[0].n_mlps == 0  # level 0 never started
    assert model.levels[1].n_mlps > 0
    decoded = model.decode()
    assert decoded.shape == image.shape
    assert psnr(image, decoded, 255) > 20  # the coarse levels already carry the image


def test_fit_is_deterministic_for_a_seed():
    image = smooth((32, 32)).astype(np.float32)
    a = nm.fit(image, SMALL, device="cpu").decode()
    b = nm.fit(image, SMALL, device="cpu").decode()
    np.testing.assert_array_equal(a, b)


def test_constant_image():
    image = np.full((32, 48), 7, np.uint8)
    model = nm.fit(image, SMALL, device="cpu")
    np.testing.assert_array_equal(model.decode(), image)


def test_dask_input():
    da = pytest.importorskip("dask.array")
    image = smooth((40, 40)).astype(np.float32)
    model = nm.fit(da.from_array(image, chunks=16), SMALL, device="cpu")
    assert model.decode().shape == (40, 40)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (np.zeros((0, 8)), nm.InvalidInputError, "empty"),
        (np.arange(10.0), nm.InvalidInputError, "2-dimensional"),
        (np.full((16, 16), np.nan), nm.InvalidInputError, "NaN"),
        (np.zeros((16, 16), dtype=object), nm.InvalidInputError, "dtype"),
        (
            np.zeros((16, 16)),
            nm.ConfigError,
            "n_levels",
        ),  # 4 default levels need 16 px: ok; 5 don't
    ],
)
def test_bad_input_raises_the_package_errors(data, error, message):
    config = nm.MinerConfig(n_levels=5, block_size=4)
    with pytest.raises(error, match=message):
        nm.fit(data, config, device="cpu")


def test_bad_config_values():
    with pytest.raises(nm.ConfigError, match="block_size"):
        nm.MinerConfig(block_size=1)
    with pytest.raises(nm.ConfigError, match="n_levels"):
        nm.MinerConfig(n_levels=0)
    with pytest.raises(nm.ConfigError, match="pixel_fraction"):
        nm.MinerConfig(pixel_fraction=0)
    with pytest.raises(TypeError, match="MinerConfig"):
        nm.fit(np.zeros((16, 16)), {"n_levels": 2})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"weight_bits": 0}, "weight_bits must be"),
        ({"weight_bits": 3}, "weight_bits must be"),
        ({"weight_bits": 17}, "weight_bits must be"),
        ({"weight_bits": 7.5}, "weight_bits must be"),
        ({"weight_bits": 7, "target_psnr": 55.0}, "7 bits reach about 50 dB"),
        ({"max_splits": 5, "block_size": 32}, "max_splits"),
        ({"max_splits": 1, "block_size": 2}, "below 2 pixels"),
        ({"split_width": 0}, "split_width"),
        ({"lite_width": 0}, "lite_width"),
        ({"qat_budget_db": -0.1}, "qat_budget_db"),
    ],
)
def test_settings_that_cannot_work_fail_before_training(settings, message):
    with pytest.raises(nm.ConfigError, match=message):
        nm.MinerConfig(**settings)
    assert nm.MinerConfig(weight_bits=None, target_psnr=55.0).weight_bits is None  # float32


def test_config_dict_round_trip():
    config = nm.MinerConfig(n_levels=3, omega_0=25.0)
    assert nm.MinerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(nm.ConfigError, match="unknown"):
        nm.MinerConfig.from_dict({"n_levles": 3})


def test_device_resolution():
    assert nm.resolve_device("cpu") == torch.device("cpu")
    assert nm.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(nm.DeviceError, match="unknown device"):
        nm.resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(nm.DeviceError, match="CUDA is not available"):
        nm.fit(np.zeros((32, 32)), SMALL, device="cuda")


def test_torch_failures_become_training_errors(monkeypatch):
    from napari_miner.core import bank_fit as trainer

    def broken(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(trainer, "bank_sse_and_grads", broken)
    with pytest.raises(nm.TrainingError, match="simulated kernel failure"):
        nm.fit(smooth((32, 32)).astype(np.float32), SMALL, device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_matches_cpu_quality():
    image = data.camera()[::2, ::2]
    config = nm.MinerConfig(n_levels=3, max_steps=150)
    cuda_model = nm.fit(image, config, device="cuda")
    cpu_model = nm.fit(image, config, device="cpu")
    cuda_psnr = psnr(image, cuda_model.decode(), 255)
    assert cuda_psnr > 33
    assert abs(cuda_psnr - psnr(image, cpu_model.decode(), 255)) < 1.0
    np.testing.assert_allclose(
        cuda_model.decode_normalized(0, device="cuda").cpu().numpy(),
        cuda_model.decode_normalized(0).numpy(),
        atol=1e-4,
    )


def test_zarr_input(tmp_path):
    zarr = pytest.importorskip("zarr")
    image = (smooth((40, 36)) * 1000).astype(np.int16)
    stored = zarr.create_array(
        tmp_path / "image.zarr", shape=image.shape, chunks=(16, 16), dtype=image.dtype
    )
    stored[:] = image
    model = nm.fit(zarr.open_array(tmp_path / "image.zarr", mode="r"), SMALL, device="cpu")
    decoded = model.decode()
    assert decoded.dtype == np.int16 and decoded.shape == image.shape
    assert (
        model.metadata["input_sha256"]
        == nm.fit(image, SMALL, device="cpu").metadata["input_sha256"]
    )
