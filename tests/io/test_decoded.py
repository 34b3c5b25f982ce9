"""Writing a decoded level (or a region of it) to .npy, .png, .tif and .zarr."""

import numpy as np
import pytest
import zarr
from miner_test_data import smooth

import napari_miner as nm
from napari_miner.core.errors import ConfigError, ModelFormatError, OutputExistsError
from napari_miner.io.decoded import DECODED_FORMATS, check_decoded_path, write_decoded

TINY = {"n_levels": 2, "block_size": 8, "max_steps": 5}


def _fit(data, **overrides):
    return nm.fit(data, nm.MinerConfig(**{**TINY, **overrides}), device="cpu")


@pytest.fixture(scope="module")
def gray():
    """A uint8 image of 136x40 pixels: level 0 has two chunks of 16 blocks along y."""
    values = ((smooth((136, 40), frequency=5.0) + 1) * 100).astype(np.uint8)
    return _fit(values)


@pytest.fixture(scope="module")
def rgb():
    values = ((smooth((24, 32, 3), frequency=4.0) + 1) * 100).astype(np.uint8)
    return _fit(values)


def _hidden(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_npy_level_and_region(gray, tmp_path):
    assert write_decoded(gray, tmp_path / "full.npy") == tmp_path / "full.npy"
    np.testing.assert_array_equal(np.load(tmp_path / "full.npy"), gray.decode(0))
    region = (slice(-20, None), slice(None, 12))
    write_decoded(gray, tmp_path / "part.NPY", level=1, region=region)
    expected = gray.decode(1, region=(slice(48, 68), slice(0, 12)))
    np.testing.assert_array_equal(np.load(tmp_path / "part.NPY"), expected)
    assert _hidden(tmp_path) == []


def test_png_and_tif(gray, rgb, tmp_path):
    from skimage import io as skio

    write_decoded(gray, tmp_path / "gray.png", level=1)
    np.testing.assert_array_equal(skio.imread(str(tmp_path / "gray.png")), gray.decode(1))
    write_decoded(rgb, tmp_path / "rgb.png")
    np.testing.assert_array_equal(skio.imread(str(tmp_path / "rgb.png")), rgb.decode(0))
    write_decoded(rgb, tmp_path / "rgb.tif", region=(slice(2, 10), slice(4, 9)))
    expected = rgb.decode(0, region=(slice(2, 10), slice(4, 9)))
    np.testing.assert_array_equal(skio.imread(str(tmp_path / "rgb.tif")), expected)
    assert _hidden(tmp_path) == []


def test_float_volume_and_boolean_models(tmp_path):
    import tifffile
    from skimage import io as skio

    volume = _fit(smooth((16, 16, 16), frequency=3.0).astype(np.float32), n_levels=1)
    write_decoded(volume, tmp_path / "volume.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "volume.tif"), volume.decode(0))
    with pytest.raises(ConfigError, match=r"\.png holds 2D images.*use \.tif, \.npy or \.zarr"):
        write_decoded(volume, tmp_path / "volume.png")

    flat = _fit(smooth((16, 24), frequency=3.0).astype(np.float32), n_levels=1)
    with pytest.raises(ConfigError, match=r"8- or 16-bit unsigned integers; .* float32"):
        write_decoded(flat, tmp_path / "flat.png")
    assert not (tmp_path / "flat.png").exists()

    mask = _fit(smooth((16, 24), frequency=3.0) > 0, n_levels=1)
    decoded = mask.decode(0)
    assert decoded.dtype == bool
    write_decoded(mask, tmp_path / "mask.png")
    np.testing.assert_array_equal(skio.imread(str(tmp_path / "mask.png")), decoded * 255)
    write_decoded(mask, tmp_path / "mask.tif")
    np.testing.assert_array_equal(skio.imread(str(tmp_path / "mask.tif")), decoded.astype(np.uint8))
    write_decoded(mask, tmp_path / "mask.npy")
    assert np.load(tmp_path / "mask.npy").dtype == bool


@pytest.mark.parametrize(
    "region",
    [None, (slice(123, 136), slice(0, 40)), (slice(5, 130), slice(3, 37))],
    ids=["whole", "short-first-chunk", "both-chunks"],
)
def test_zarr_chunk_by_chunk(gray, tmp_path, region):
    write_decoded(gray, tmp_path / "out.zarr", region=region)
    values = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]
    np.testing.assert_array_equal(values, gray.decode(0, region=region))
    assert _hidden(tmp_path) == []


def test_zarr_of_an_rgb_region_keeps_the_channel_axis(rgb, tmp_path):
    write_decoded(rgb, tmp_path / "rgb.zarr", level=1, region=(slice(0, 5), slice(3, None)))
    values = zarr.open_array(str(tmp_path / "rgb.zarr"), mode="r")[:]
    np.testing.assert_array_equal(values, rgb.decode(1, region=(slice(0, 5), slice(3, 16))))
    assert values.shape == (5, 13, 3)


def test_existing_output_is_refused_without_overwrite(gray, tmp_path):
    for name in ("level.npy", "level.zarr"):
        target = tmp_path / name
        write_decoded(gray, target, level=1)
        with pytest.raises(OutputExistsError, match="already exists: pass overwrite=True"):
            write_decoded(gray, target, level=0)
        write_decoded(gray, target, level=0, overwrite=True)
        if name.endswith(".npy"):
            assert np.load(target).shape == gray.decoded_shape(0)
        else:
            assert zarr.open_array(str(target), mode="r").shape == gray.decoded_shape(0)
    assert _hidden(tmp_path) == []


def test_invalid_arguments(gray, tmp_path):
    with pytest.raises(
        ConfigError, match=r"cannot tell the format of .*out\.bin: name it with one"
    ):
        write_decoded(gray, tmp_path / "out.bin")
    with pytest.raises(ConfigError, match="the model has levels 0 to 1"):
        write_decoded(gray, tmp_path / "out.npy", level=2)
    with pytest.raises(ConfigError, match="2 slices"):
        write_decoded(gray, tmp_path / "out.npy", region=(slice(0, 4),))
    with pytest.raises(ConfigError, match="empty or outside"):
        write_decoded(gray, tmp_path / "out.npy", region=(slice(10, 5), slice(None)))
    with pytest.raises(ConfigError, match="has a step"):
        write_decoded(gray, tmp_path / "out.npy", region=(slice(0, 10, 2), slice(None)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_decoded(gray, tmp_path / "missing" / "out.npy")
    assert list(tmp_path.iterdir()) == []
    assert check_decoded_path("A.TIFF") == ".tiff" and ".zarr" in DECODED_FORMATS


def test_never_writes_over_the_store_it_reads(gray, tmp_path):
    store = tmp_path / "gray.zarr"
    gray.save(store)
    stored = nm.load(store)
    with pytest.raises(ModelFormatError, match="the model is read from it"):
        write_decoded(stored, store, overwrite=True)
    np.testing.assert_array_equal(nm.load(store).decode(), gray.decode())
