import hashlib
import json
import os
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_miner.core.errors import InvalidInputError
from napari_miner.io.scan import InputStats, scan_input
from napari_miner.io.source import InputSource, open_input


def _write(path: Path, data: np.ndarray, *, fmt: int = 2, chunks=(8, 8)) -> zarr.Array:
    array = zarr.create_array(
        store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=fmt
    )
    array[...] = data
    return array


def _ome_image(path: Path, data: np.ndarray, axes: list, *, fmt: int, chunks) -> None:
    """An OME-Zarr image with two levels: NGFF 0.4 (zarr v2) or 0.5 (zarr v3)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    scale = [1.0] * data.ndim
    multiscales = [
        {
            "name": "image",
            "axes": axes,
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": scale}]},
            ],
        }
    ]
    if fmt == 2:
        multiscales[0]["version"] = "0.4"
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    for name, level in (("0", data), ("1", data[..., ::2, ::2])):
        array = group.create_array(name, shape=level.shape, chunks=chunks, dtype=level.dtype)
        array[...] = level


def _axes(names: str) -> list[dict]:
    types = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    return [{"name": n, "type": types[n]} for n in names]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def data():
    return np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)


@pytest.fixture
def nested(tmp_path, data):
    """A zarr v2 store ``nested.zarr`` with ``scans/0``, ``scans/1`` and ``labels/mask``."""
    root = zarr.open_group(str(tmp_path / "nested.zarr"), mode="w", zarr_format=2)
    scans = root.create_group("scans")
    for name, values in (("0", data), ("1", data[::2, ::2])):
        scans.create_array(name, shape=values.shape, chunks=(8, 8), dtype=values.dtype)[...] = (
            values
        )
    root.create_group("labels").create_array("mask", shape=(4, 4), dtype="u1")
    return tmp_path / "nested.zarr"


# ------------------------------------------------------------------------------ plain stores
@pytest.mark.parametrize("fmt", [2, 3])
def test_open_array_store(tmp_path, data, fmt):
    _write(tmp_path / "img.zarr", data, fmt=fmt, chunks=(8, 16))
    source = open_input(str(tmp_path / "img.zarr"))
    assert isinstance(source, InputSource)
    assert isinstance(source.array, da.Array)
    assert source.array.shape == (20, 30) and source.array.dtype == np.uint16
    assert source.array.chunks == ((8, 8, 4), (16, 14))
    np.testing.assert_array_equal(source.array.compute(), data)
    assert source.name == "img.zarr"
    assert source.path == str(tmp_path / "img.zarr")
    assert source.channel_axis is None and source.is_ome is False
    assert source.component == ""


def test_open_pathlike_and_relative_path(tmp_path, data, monkeypatch):
    _write(tmp_path / "img.zarr", data)
    assert open_input(tmp_path / "img.zarr").path == str(tmp_path / "img.zarr")
    monkeypatch.chdir(tmp_path)
    source = open_input("img.zarr")
    assert source.path == str(tmp_path / "img.zarr")
    np.testing.assert_array_equal(source.array.compute(), data)


def test_group_with_component(nested, data):
    source = open_input(nested, component="scans/0")
    np.testing.assert_array_equal(source.array.compute(), data)
    assert source.name == "nested.zarr/scans/0"
    assert source.path == str(nested)
    assert source.component == "scans/0"
    assert source.is_ome is False and source.channel_axis is None


@pytest.mark.parametrize("fmt", [2, 3])
def test_path_into_store(tmp_path, data, fmt):
    root = zarr.open_group(str(tmp_path / "slide.zarr"), mode="w", zarr_format=fmt)
    root.create_group("scans").create_array("0", shape=data.shape, dtype=data.dtype)[...] = data
    for source in (
        open_input(tmp_path / "slide.zarr" / "scans" / "0"),
        open_input(f"{tmp_path}/slide.zarr/scans/0/"),
        open_input(tmp_path / "slide.zarr" / "scans", component="0"),
    ):
        np.testing.assert_array_equal(source.array.compute(), data)
        assert source.path == str(tmp_path / "slide.zarr")  # the store root, found by walking up
        assert source.component == "scans/0"
        assert source.name == "slide.zarr/scans/0"
    # reopening from path + component gives the same array
    again = open_input(source.path, component=source.component)
    np.testing.assert_array_equal(again.array.compute(), data)


def test_group_without_component_lists_arrays(nested):
    with pytest.raises(
        InvalidInputError,
        match=r"nested\.zarr is a zarr group, not an image: it holds 'labels/mask', 'scans/0', "
        r"'scans/1'; pass component='\.\.\.' or the array's path",
    ):
        open_input(nested)
    with pytest.raises(InvalidInputError, match=r"nested\.zarr/scans is a zarr group.*'0', '1'"):
        open_input(nested / "scans")


def test_empty_group(tmp_path):
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w", zarr_format=3)
    with pytest.raises(InvalidInputError, match="empty.zarr is a zarr group that holds no arrays"):
        open_input(tmp_path / "empty.zarr")


def test_missing_component(nested):
    message = r"the zarr store has no array or group 'scans/9' \(it holds 'labels/mask', "
    with pytest.raises(InvalidInputError, match=message):
        open_input(nested, component="scans/9")
    with pytest.raises(InvalidInputError, match=message):
        open_input(nested / "scans" / "9")
    with pytest.raises(InvalidInputError, match="no array or group 'scans/9/deeper'"):
        open_input(nested / "scans" / "9" / "deeper")
    with pytest.raises(InvalidInputError, match=r"component='\.\./x' must be a path inside"):
        open_input(nested / "scans", component="../x")


def test_component_of_an_array_store(tmp_path, data):
    _write(tmp_path / "img.zarr", data)
    with pytest.raises(
        InvalidInputError, match="is a zarr array, not a group: it has no component 'x'"
    ):
        open_input(tmp_path / "img.zarr", component="x")


def test_missing_path(tmp_path):
    with pytest.raises(InvalidInputError, match=r"nothere\.zarr: no such file or directory"):
        open_input(tmp_path / "nothere.zarr")


def test_not_a_store(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(
        InvalidInputError,
        match=r"plain is not a zarr store: it is a directory without zarr metadata "
        r"\(\.zarray, \.zgroup or zarr\.json\); supported inputs are zarr arrays, .*\.npy "
        r"files and image files \(\.png, \.tif",
    ):
        open_input(tmp_path / "plain")
    (tmp_path / "image.tif").write_bytes(b"II*\x00")  # a truncated TIFF
    with pytest.raises(
        InvalidInputError, match=r"cannot read .*image\.tif as an image \(.*supported inputs are"
    ):
        open_input(tmp_path / "image.tif")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InvalidInputError, match=r"notes\.txt as an image .*\.npy files"):
        open_input(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_image_file(tmp_path, suffix):
    from skimage import io as skio

    rgb = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
    skio.imsave(str(tmp_path / f"rgb{suffix}"), rgb, check_contrast=False)
    source = open_input(tmp_path / f"rgb{suffix}")
    assert isinstance(source.array, da.Array)
    assert source.name == f"rgb{suffix}" and source.path == str(tmp_path / f"rgb{suffix}")
    assert source.channel_axis is None and not source.is_ome and source.component is None
    np.testing.assert_array_equal(source.array.compute(), rgb)


def test_multipage_tiff_is_a_volume(tmp_path):
    import tifffile

    volume = np.arange(7 * 6 * 5, dtype=np.uint16).reshape(7, 6, 5)
    tifffile.imwrite(tmp_path / "stack.tif", volume, photometric="minisblack")
    source = open_input(str(tmp_path / "stack.tif"))
    np.testing.assert_array_equal(source.array.compute(), volume)


def test_npy_file_is_memory_mapped_and_read_lazily(tmp_path, data):
    np.save(tmp_path / "data.npy", data)
    before = _snapshot(tmp_path)
    source = open_input(tmp_path / "data.npy")
    assert isinstance(source.array, da.Array)
    assert source.name == "data.npy" and source.path == str(tmp_path / "data.npy")
    assert source.channel_axis is None and source.component is None
    np.testing.assert_array_equal(source.array[5:9].compute(), data[5:9])
    assert _snapshot(tmp_path) == before  # never written to


def test_bad_files(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInputError, match=r"cannot read .*objects\.npy as a \.npy array"):
        open_input(tmp_path / "objects.npy")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InvalidInputError, match=r"broken\.npy as a \.npy array"):
        open_input(tmp_path / "broken.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(InvalidInputError, match=r"empty\.npy: input is empty"):
        open_input(tmp_path / "empty.npy")
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    with pytest.raises(InvalidInputError, match=r"text\.npy: dtype <U1 is not supported"):
        open_input(tmp_path / "text.npy")
    np.save(tmp_path / "ok.npy", np.ones((4, 4)))
    with pytest.raises(InvalidInputError, match="only applies to zarr stores, not to the file"):
        open_input(tmp_path / "ok.npy", component="a")


def test_corrupt_metadata(tmp_path):
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / ".zarray").write_text("{not json")
    with pytest.raises(InvalidInputError, match=r"bad\.zarr: cannot open the zarr store"):
        open_input(tmp_path / "bad.zarr")


def test_unsupported_dtype_and_empty(tmp_path):
    _write(tmp_path / "complex.zarr", np.zeros((4, 4), np.complex64), fmt=3, chunks=(4, 4))
    with pytest.raises(InvalidInputError, match="complex.zarr: dtype complex64 is not supported"):
        open_input(tmp_path / "complex.zarr")
    zarr.create_array(store=str(tmp_path / "empty.zarr"), shape=(0, 5), dtype="u1")
    with pytest.raises(InvalidInputError, match=r"empty\.zarr: input is empty \(shape \(0, 5\)\)"):
        open_input(tmp_path / "empty.zarr")
    with pytest.raises(InvalidInputError, match="dtype <U1 is not supported"):
        open_input(np.array([["a", "b"], ["c", "d"]]))


def test_open_reads_no_data_and_never_writes(tmp_path, data):
    _write(tmp_path / "img.zarr", data)
    (tmp_path / "img.zarr" / "0.0").write_bytes(b"garbage")  # a corrupt chunk
    before = _snapshot(tmp_path)
    source = open_input(tmp_path / "img.zarr")  # reads metadata only
    assert source.array.shape == (20, 30)
    np.testing.assert_array_equal(source.array[8:, 8:].compute(), data[8:, 8:])
    with pytest.raises(Exception):  # noqa: B017 - whatever the codec raises on garbage
        source.array[:8, :8].compute()
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------- OME-Zarr
@pytest.mark.parametrize("fmt", [2, 3])
def test_ome_image_with_time_and_channels(tmp_path, fmt):
    values = np.random.default_rng(0).integers(0, 1000, (1, 3, 20, 24), dtype=np.uint16)
    _ome_image(tmp_path / "ome.zarr", values, _axes("tcyx"), fmt=fmt, chunks=(1, 1, 8, 8))
    source = open_input(tmp_path / "ome.zarr")
    assert source.is_ome is True
    assert source.array.shape == (3, 20, 24)  # length-1 time axis squeezed
    assert source.channel_axis == 0
    assert source.component == "0" and source.name == "ome.zarr"
    assert source.path == str(tmp_path / "ome.zarr")
    np.testing.assert_array_equal(source.array.compute(), values[0])


def test_ome_05_channel_last_volume(tmp_path):
    values = np.random.default_rng(1).random((5, 6, 7, 2)).astype(np.float32)
    axes = [
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
        {"name": "c", "type": "channel"},
    ]
    _ome_image(tmp_path / "vol.zarr", values, axes, fmt=3, chunks=(4, 4, 4, 2))
    source = open_input(tmp_path / "vol.zarr")
    assert source.array.shape == (5, 6, 7, 2) and source.channel_axis == 3
    np.testing.assert_array_equal(source.array.compute(), values)


def test_ome_flat_z_of_2d_image_squeezed(tmp_path):
    values = np.arange(16 * 18, dtype=np.uint8).reshape(1, 1, 1, 16, 18)
    _ome_image(tmp_path / "flat.zarr", values, _axes("tczyx"), fmt=2, chunks=(1, 1, 1, 8, 8))
    source = open_input(tmp_path / "flat.zarr")
    assert source.array.shape == (1, 16, 18) and source.channel_axis == 0
    np.testing.assert_array_equal(source.array.compute(), values[0, :, 0])


def test_ome_without_channel_axis_and_ngff_03_axis_names(tmp_path):
    values = np.arange(4 * 10 * 12, dtype=np.int16).reshape(4, 10, 12)
    _ome_image(tmp_path / "v.zarr", values, ["z", "y", "x"], fmt=2, chunks=(2, 8, 8))
    source = open_input(tmp_path / "v.zarr")
    assert source.array.shape == (4, 10, 12) and source.channel_axis is None and source.is_ome


@pytest.mark.parametrize("fmt", [2, 3])
def test_ome_level_path_gets_the_image_axes(tmp_path, fmt):
    values = np.arange(2 * 20 * 24, dtype=np.uint16).reshape(1, 2, 20, 24)
    _ome_image(tmp_path / "ome.zarr", values, _axes("tcyx"), fmt=fmt, chunks=(1, 1, 8, 8))
    for source in (
        open_input(tmp_path / "ome.zarr" / "1"),
        open_input(tmp_path / "ome.zarr", component="1"),
    ):
        assert source.is_ome and source.component == "1" and source.name == "ome.zarr/1"
        assert source.array.shape == (2, 10, 12) and source.channel_axis == 0
        np.testing.assert_array_equal(source.array.compute(), values[0, :, ::2, ::2])


def test_ome_image_inside_a_plate_like_group(tmp_path):
    values = np.ones((2, 8, 8), np.uint8)
    zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=2)
    _ome_image(tmp_path / "b2r.zarr" / "0", values, _axes("cyx"), fmt=2, chunks=(1, 8, 8))
    with pytest.raises(InvalidInputError, match=r"it holds '0'; pass component="):
        open_input(tmp_path / "b2r.zarr")
    source = open_input(tmp_path / "b2r.zarr", component="0")
    assert source.is_ome and source.channel_axis == 0 and source.component == "0/0"
    assert source.name == "b2r.zarr/0" and source.path == str(tmp_path / "b2r.zarr")


@pytest.mark.parametrize("fmt", [2, 3])
def test_ome_time_series_is_refused(tmp_path, fmt):
    values = np.zeros((3, 1, 8, 8), np.uint8)
    _ome_image(tmp_path / "movie.zarr", values, _axes("tcyx"), fmt=fmt, chunks=(1, 1, 8, 8))
    with pytest.raises(
        InvalidInputError,
        match=r"movie\.zarr is a time series \(3 time points on axis 't'\); select a time point",
    ):
        open_input(tmp_path / "movie.zarr")


def test_ome_bad_metadata(tmp_path):
    values = np.zeros((2, 8, 8), np.uint8)
    _ome_image(tmp_path / "a.zarr", values, _axes("yx"), fmt=2, chunks=(1, 8, 8))
    with pytest.raises(
        InvalidInputError, match=r"a\.zarr: the OME-Zarr metadata lists 2 axes but the array has"
    ):
        open_input(tmp_path / "a.zarr")
    group = zarr.open_group(str(tmp_path / "b.zarr"), mode="w", zarr_format=3)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": _axes("yx"), "datasets": []}]}
    with pytest.raises(
        InvalidInputError, match=r"b\.zarr: the OME-Zarr multiscales metadata lists no datasets"
    ):
        open_input(tmp_path / "b.zarr")
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": _axes("yx"), "datasets": [{"path": "0"}]}],
    }
    with pytest.raises(InvalidInputError, match=r"level 0 \('0'\) is missing from the store"):
        open_input(tmp_path / "b.zarr")
    _ome_image(
        tmp_path / "c.zarr",
        np.zeros((2, 2, 8, 8), np.uint8),
        [{"name": "c", "type": "channel"}, {"name": "d", "type": "channel"}] + _axes("yx"),
        fmt=2,
        chunks=(1, 1, 8, 8),
    )
    with pytest.raises(InvalidInputError, match="more than one channel axis"):
        open_input(tmp_path / "c.zarr")


# -------------------------------------------------------------------------------- in memory
def test_in_memory_arrays(tmp_path, data):
    source = open_input(data)
    assert source.name == "numpy array" and source.path is None and source.component is None
    np.testing.assert_array_equal(source.array.compute(), data)

    lazy = da.from_array(data, chunks=(5, 5))
    source = open_input(lazy)
    assert source.array is lazy and source.name == "dask array" and source.path is None

    stored = _write(tmp_path / "img.zarr", data, fmt=3, chunks=(10, 10))
    source = open_input(stored)
    assert source.array.chunks == ((10, 10), (10, 10, 10))
    assert source.path == str(tmp_path / "img.zarr") and source.name == "img.zarr"
    np.testing.assert_array_equal(source.array.compute(), data)

    with pytest.raises(InvalidInputError, match="component='a' only applies to paths"):
        open_input(data, component="a")
    with pytest.raises(InvalidInputError, match="cannot open an input of type list"):
        open_input([[1, 2], [3, 4]])


def test_sharded_v3_array_is_read_in_shards(tmp_path, data):
    array = zarr.create_array(
        store=str(tmp_path / "sharded.zarr"),
        shape=data.shape,
        chunks=(5, 5),
        shards=(10, 15),
        dtype=data.dtype,
    )
    array[...] = data
    source = open_input(tmp_path / "sharded.zarr")
    assert source.array.chunks == ((10, 10), (15, 15))
    np.testing.assert_array_equal(source.array.compute(), data)


# --------------------------------------------------------------------------------- scanning
def _expected_digest(array: da.Array) -> str:
    """The digest as InputStats documents it."""
    header = json.dumps(
        {
            "shape": list(array.shape),
            "dtype": array.dtype.str,
            "chunks": [list(c) for c in array.chunks],
        }
    ).encode()
    outer = hashlib.sha256(header)
    blocks = array.blocks
    for index in np.ndindex(*array.numblocks):
        outer.update(
            hashlib.sha256(np.ascontiguousarray(blocks[index].compute()).tobytes()).digest()
        )
    return outer.hexdigest()


def test_scan_input_values_and_digest(tmp_path):
    values = np.random.default_rng(3).integers(-500, 700, (21, 34), dtype=np.int32)
    values[4, 5], values[20, 33] = -501, 701
    _write(tmp_path / "v2.zarr", values, fmt=2, chunks=(8, 16))
    _write(tmp_path / "v3.zarr", values, fmt=3, chunks=(8, 16))
    stats = scan_input(open_input(tmp_path / "v2.zarr").array)
    assert stats == InputStats(-501.0, 701.0, _expected_digest(da.from_array(values, (8, 16))))
    # same values, dtype and chunks: same digest, whatever the zarr format
    assert scan_input(open_input(tmp_path / "v3.zarr").array) == stats
    changed = values.copy()
    changed[10, 10] += 1
    assert scan_input(da.from_array(changed, (8, 16))).digest != stats.digest
    assert scan_input(da.from_array(values.astype(np.int64), (8, 16))).digest != stats.digest
    # the digest depends on the chunking (documented)
    assert scan_input(da.from_array(values, (7, 16))).digest != stats.digest


def test_scan_input_float_bool_and_3d():
    values = np.linspace(-2.5, 4.0, 6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    stats = scan_input(da.from_array(values, chunks=(4, 4, 4)))
    assert (stats.value_min, stats.value_max) == (-2.5, 4.0)
    mask = np.zeros((9, 9), bool)
    assert (
        scan_input(da.from_array(mask, 4)).value_min,
        scan_input(da.from_array(mask, 4)).value_max,
    ) == (0.0, 0.0)
    mask[3, 3] = True
    assert scan_input(da.from_array(mask, 4)).value_max == 1.0
    assert scan_input(mask).value_max == 1.0  # a numpy array is wrapped


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_scan_input_refuses_non_finite(bad):
    values = np.zeros((12, 10), np.float64)
    values[5, 2] = bad
    with pytest.raises(
        InvalidInputError,
        match=r"input contains NaN or infinite values \(e\.g\. in the chunk at \[4:8, 0:4\]\); "
        r"replace them before fitting",
    ):
        scan_input(da.from_array(values, chunks=(4, 4)))


def test_scan_input_reads_every_chunk_once():
    calls: dict[tuple, int] = {}

    def counted(block, block_id=None):
        calls[block_id] = calls.get(block_id, 0) + 1
        return block

    array = da.arange(30 * 40, chunks=100).reshape(30, 40).rechunk((8, 16))
    array = array.map_blocks(counted, meta=np.empty((0, 0), array.dtype))
    stats = scan_input(array)
    assert (stats.value_min, stats.value_max) == (0.0, 1199.0)
    # a single pass: every chunk computed exactly once
    assert calls == {index: 1 for index in np.ndindex(4, 3)}


def test_scan_input_invalid():
    with pytest.raises(InvalidInputError, match=r"input is empty \(shape \(0, 3\)\)"):
        scan_input(da.zeros((0, 3)))
    with pytest.raises(InvalidInputError, match="dtype complex128 is not supported"):
        scan_input(da.zeros((3, 3), dtype=complex))


def test_scan_does_not_modify_the_store(tmp_path, data):
    _write(tmp_path / "img.zarr", data, fmt=3)
    before = _snapshot(tmp_path)
    scan_input(open_input(tmp_path / "img.zarr").array)
    assert _snapshot(tmp_path) == before
    assert os.listdir(tmp_path) == ["img.zarr"]
