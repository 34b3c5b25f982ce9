import tracemalloc
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from napari_miner.core.errors import InvalidInputError
from napari_miner.core.layout import layout_of
from napari_miner.core.pyramid import gaussian_targets
from napari_miner.io.scan import scan_input
from napari_miner.io.source import open_input
from napari_miner.io.targets import (
    TargetLevel,
    build_targets,
    default_chunk,
    normalized,
    read_region,
)


def _layout(values: np.ndarray, **kwargs):
    return layout_of(values.shape, values.dtype, values.min(), values.max(), **kwargs)


def _everything(target: TargetLevel) -> np.ndarray:
    return read_region(target, [slice(None)] * (len(target.shape) - 1))


def _chunk_files(directory: Path) -> dict[str, int]:
    """Modification times of the stored target data (chunks and metadata)."""
    return {
        str(p.relative_to(directory)): p.stat().st_mtime_ns
        for p in sorted((directory / "targets").rglob("*"))
        if p.is_file()
    }


def _counting(values: np.ndarray, chunks) -> tuple[da.Array, dict]:
    """A dask array of ``values`` that counts how often each chunk is computed."""
    calls: dict = {}

    def counted(block, block_id=None):
        calls[block_id] = calls.get(block_id, 0) + 1
        return block

    array = da.from_array(values, chunks=chunks).map_blocks(
        counted, meta=np.empty((0,) * values.ndim, values.dtype)
    )
    return array, calls


RNG = np.random.default_rng(5)
CASES = {
    "odd-2d": (RNG.integers(0, 256, (37, 50), dtype=np.uint8), {}),
    "even-2d": (RNG.random((64, 48)).astype(np.float32) * 7 - 2, {}),
    "rgb": (RNG.integers(0, 65536, (33, 47, 3), dtype=np.uint16), {}),
    "channels-first": (RNG.integers(-9, 9, (2, 19, 26), dtype=np.int16), {"channel_axis": 0}),
    "volume": (RNG.random((9, 13, 11)), {}),
}


# ------------------------------------------------------------------------------- normalized
@pytest.mark.parametrize("case", CASES)
def test_normalized_is_exactly_layout_normalize(case):
    values, kwargs = CASES[case]
    layout = _layout(values, **kwargs)
    lazy = normalized(da.from_array(values, chunks=7), layout)
    assert lazy.dtype == np.float32
    expected = layout.normalize(values).numpy()
    assert lazy.shape == expected.shape
    assert lazy.chunks[0] == (expected.shape[0],)  # channels are never split
    np.testing.assert_array_equal(lazy.compute(), expected)


def test_normalized_wraps_numpy_and_checks_shape():
    values = np.arange(12, dtype=np.uint8).reshape(3, 4)
    layout = _layout(values)
    np.testing.assert_array_equal(
        normalized(values, layout).compute(), layout.normalize(values).numpy()
    )
    with pytest.raises(
        InvalidInputError, match=r"input shape \(4, 3\) does not match its layout's shape \(3, 4\)"
    ):
        normalized(da.zeros((4, 3)), layout)


# ------------------------------------------------------------------- values of the levels
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk", [4, 5, 64])
def test_targets_match_in_memory_pyramid(tmp_path, case, chunk):
    values, kwargs = CASES[case]
    layout = _layout(values, **kwargs)
    targets = build_targets(
        da.from_array(values, chunks=7), layout, 4, tmp_path, fingerprint="x", chunk=chunk
    )
    expected = gaussian_targets(layout.normalize(values), 4)
    assert [t.level for t in targets] == [0, 1, 2, 3]
    assert isinstance(targets[0].array, da.Array)
    for target, reference in zip(targets, expected, strict=True):
        assert target.shape == tuple(reference.shape)
        got = _everything(target)
        assert got.dtype == np.float32 and got.shape == target.shape
        np.testing.assert_allclose(got, reference.numpy(), rtol=0, atol=1e-6)
    for target in targets[1:]:
        assert isinstance(target.array, zarr.Array)
        assert (tmp_path / "targets" / str(target.level) / ".zarray").is_file()
        spatial = target.spatial_shape
        assert target.array.chunks == (target.shape[0], *(min(chunk, s) for s in spatial))
        assert target.array.attrs["complete"] is True
        assert target.array.attrs["build"]["fingerprint"] == "x"


def test_default_chunks(tmp_path):
    assert (default_chunk(2), default_chunk(3)) == (1024, 128)
    image = np.zeros((2100, 9), np.uint8)
    targets = build_targets(da.from_array(image), _layout(image), 2, tmp_path / "a", fingerprint="")
    assert targets[1].array.chunks == (1, 1024, 5)
    volume = np.zeros((300, 6, 6), np.float32)
    targets = build_targets(
        da.from_array(volume), _layout(volume), 2, tmp_path / "b", fingerprint=""
    )
    assert targets[1].array.chunks == (1, 128, 3, 3)


def test_single_level_writes_nothing(tmp_path):
    values = np.ones((8, 8), np.uint8)
    targets = build_targets(values, _layout(values), 1, tmp_path / "work", fingerprint="f")
    assert len(targets) == 1 and targets[0].shape == (1, 8, 8)
    assert not (tmp_path / "work").exists()


def test_invalid_arguments(tmp_path):
    values = np.ones((8, 8), np.uint8)
    with pytest.raises(ValueError, match="n_levels must be at least 1, got 0"):
        build_targets(values, _layout(values), 0, tmp_path, fingerprint="f")
    with pytest.raises(ValueError, match="chunk must be a positive number of pixels, got 0"):
        build_targets(values, _layout(values), 2, tmp_path, fingerprint="f", chunk=0)
    with pytest.raises(InvalidInputError, match="does not match its layout's shape"):
        build_targets(np.ones((8, 9)), _layout(values), 2, tmp_path, fingerprint="f")


# ----------------------------------------------------------------------------- read_region
def test_read_region(tmp_path):
    values, _ = CASES["rgb"]
    layout = _layout(values)
    targets = build_targets(
        da.from_array(values, chunks=8), layout, 3, tmp_path, fingerprint="r", chunk=4
    )
    expected = gaussian_targets(layout.normalize(values), 3)
    region = (slice(3, 20), slice(10, 30))
    level0 = read_region(targets[0], region)
    assert level0.dtype == np.float32 and level0.flags.c_contiguous
    np.testing.assert_array_equal(level0, expected[0].numpy()[:, 3:20, 10:30])
    level1 = read_region(targets[1], [slice(5, 17), slice(0, 7)])
    assert level1.shape == (3, 12, 7) and level1.dtype == np.float32
    np.testing.assert_allclose(level1, expected[1].numpy()[:, 5:17, :7], atol=1e-6, rtol=0)
    # numpy slicing rules: bounds past the edge are clipped
    assert read_region(targets[2], [slice(6, 100), slice(0, 100)]).shape == (3, 3, 12)
    with pytest.raises(ValueError, match="region must be 2 slices"):
        read_region(targets[1], [slice(0, 2)])
    with pytest.raises(ValueError, match="region must be 2 slices"):
        read_region(targets[1], [0, slice(0, 2)])


def test_read_region_volume(tmp_path):
    values, _ = CASES["volume"]
    layout = _layout(values)
    targets = build_targets(da.from_array(values, 5), layout, 2, tmp_path, fingerprint="v", chunk=3)
    expected = gaussian_targets(layout.normalize(values), 2)[1].numpy()
    got = read_region(targets[1], (slice(1, 4), slice(2, 7), slice(0, 6)))
    np.testing.assert_allclose(got, expected[:, 1:4, 2:7, 0:6], atol=1e-6, rtol=0)
    np.testing.assert_allclose(targets[1].to_dask().compute(), expected, atol=1e-6, rtol=0)


# -------------------------------------------------------------------------------- resuming
def test_completed_levels_are_reused(tmp_path):
    values, _ = CASES["odd-2d"]
    layout = _layout(values)
    array, calls = _counting(values, (10, 10))
    first = build_targets(array, layout, 4, tmp_path, fingerprint="abc", chunk=8)
    assert calls and set(calls.values()) == {1}  # the input is read once to build level 1
    stored = _chunk_files(tmp_path)
    calls.clear()
    again = build_targets(array, layout, 4, tmp_path, fingerprint="abc", chunk=8)
    assert calls == {}  # nothing recomputed: not even the input is read
    assert _chunk_files(tmp_path) == stored  # nothing rewritten
    for a, b in zip(first[1:], again[1:], strict=True):
        np.testing.assert_array_equal(_everything(a), _everything(b))


def test_each_level_is_computed_from_the_stored_level_below(tmp_path):
    values, _ = CASES["odd-2d"]
    layout = _layout(values)
    build_targets(values, layout, 2, tmp_path, fingerprint="abc", chunk=8)
    # tamper with stored level 1, keeping its completion mark: it is reused as it is,
    # and level 2 is computed from it (not from the input)
    level1 = zarr.open_array(str(tmp_path / "targets" / "1"), mode="r+")
    level1[...] = 0.25
    targets = build_targets(values, layout, 3, tmp_path, fingerprint="abc", chunk=8)
    np.testing.assert_array_equal(_everything(targets[1]), np.full((1, 19, 25), 0.25, np.float32))
    np.testing.assert_array_equal(_everything(targets[2]), np.full((1, 10, 13), 0.25, np.float32))


def test_incomplete_level_is_rebuilt_with_the_levels_above(tmp_path):
    values, _ = CASES["even-2d"]
    layout = _layout(values)
    build_targets(values, layout, 4, tmp_path, fingerprint="abc", chunk=8)
    before = _chunk_files(tmp_path)
    # as if the process died while writing level 2
    level2 = zarr.open_array(str(tmp_path / "targets" / "2"), mode="r+")
    level2[:, :5] = 9.0
    level2.attrs["complete"] = False
    targets = build_targets(values, layout, 4, tmp_path, fingerprint="abc", chunk=8)
    after = _chunk_files(tmp_path)
    expected = gaussian_targets(layout.normalize(values), 4)
    for target, reference in zip(targets, expected, strict=True):
        np.testing.assert_allclose(_everything(target), reference.numpy(), atol=1e-6, rtol=0)
    assert all(t.array.attrs["complete"] is True for t in targets[1:])
    level1 = {k: v for k, v in before.items() if k.startswith("targets/1/")}
    assert level1 and all(after[k] == v for k, v in level1.items())  # level 1 untouched
    assert any(after[k] != before[k] for k in before if k.startswith("targets/3/"))  # rebuilt


@pytest.mark.parametrize("change", ["fingerprint", "layout", "chunk"])
def test_different_build_is_rebuilt(tmp_path, change):
    values = RNG.integers(0, 256, (40, 40), dtype=np.uint8)
    other = 255 - values
    build_targets(values, _layout(values), 3, tmp_path, fingerprint="one", chunk=8)
    if change == "fingerprint":  # same shape and layout, other content
        source, layout, fingerprint, chunk = other, _layout(values), "two", 8
    elif change == "layout":
        layout = layout_of(values.shape, values.dtype, -10.0, 300.0)  # other value range
        source, fingerprint, chunk = values, "one", 8
    else:
        source, layout, fingerprint, chunk = values, _layout(values), "one", 16
    targets = build_targets(source, layout, 3, tmp_path, fingerprint=fingerprint, chunk=chunk)
    expected = gaussian_targets(layout.normalize(source), 3)
    for target, reference in zip(targets, expected, strict=True):
        np.testing.assert_allclose(_everything(target), reference.numpy(), atol=1e-6, rtol=0)
    assert targets[1].array.attrs["build"]["fingerprint"] == fingerprint
    assert targets[1].array.chunks == (1, chunk, chunk)


# ---------------------------------------------------------------------------------- memory
def test_memory_stays_bounded_by_chunks(tmp_path):
    side, chunk = 4096, 256
    stored = zarr.create_array(
        store=str(tmp_path / "big.zarr"),
        shape=(side, side),
        chunks=(chunk, chunk),
        dtype="u1",
        zarr_format=2,
    )
    rows = np.arange(side, dtype=np.uint8)
    stored[...] = rows[:, None] ^ rows[None, :]
    source = open_input(tmp_path / "big.zarr")
    # warm up first: modules imported on first use would count as allocations
    small = np.zeros((64, 64), np.uint8)
    build_targets(small, _layout(small), 3, tmp_path / "warm", fingerprint="", chunk=8)
    scan_input(da.from_array(small, 16))
    level_bytes = side * side * 4  # level 0 as float32: 64 MiB
    with dask.config.set(scheduler="threads", num_workers=2):
        tracemalloc.start()
        try:
            stats = scan_input(source.array)
            scan_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            layout = layout_of((side, side), np.uint8, stats.value_min, stats.value_max)
            targets = build_targets(
                source.array, layout, 3, tmp_path / "work", fingerprint=stats.digest, chunk=chunk
            )
            build_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert (stats.value_min, stats.value_max) == (0.0, 255.0)
    assert [t.shape for t in targets] == [(1, 4096, 4096), (1, 2048, 2048), (1, 1024, 1024)]
    # a few chunks at a time (one input chunk is 64 KiB, one level-1 chunk 256 KiB as float32):
    # the scan holds far less than the 16 MiB input, the build less than level 1 alone (16 MiB)
    assert scan_peak < level_bytes // 8, scan_peak
    assert build_peak < level_bytes // 4, build_peak
    corner = read_region(targets[2], (slice(0, 2), slice(0, 2)))
    expected = (rows[:8, None] ^ rows[None, :8]).reshape(2, 4, 2, 4).mean(axis=(1, 3)) / 255
    np.testing.assert_allclose(corner[0], expected, atol=1e-6, rtol=0)
