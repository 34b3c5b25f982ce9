"""Model stores written by napari-miner 0.1 (formats 1 and 2) stay readable, read-only.

The stores in ``tests/data/legacy`` were written by the released 0.1 code (never regenerate them):
``format1_rgb`` by ``MinerModel.save`` (whole arrays), ``format2_gray`` by an out-of-core fit (tiled),
each with its input and its level-0 decode as ``.npy`` files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import napari_miner as nm
from napari_miner.io.chunks import ArraySpec, read_chunk, write_chunk
from napari_miner.io.store import ModelStore

DATA = Path(__file__).parents[1] / "data" / "legacy"
STORES = {"format1_rgb": 1, "format2_gray": 2}


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def assert_decodes_to(decoded: np.ndarray, expected: np.ndarray) -> None:
    """Integers exactly, floats to float32 rounding (the decode kernel is not the one that wrote
    the expected arrays)."""
    assert decoded.dtype == expected.dtype
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(decoded, expected, rtol=0, atol=2e-6)
    else:
        np.testing.assert_array_equal(decoded, expected)


@pytest.fixture
def copy(tmp_path):
    def make(name: str) -> Path:
        path = tmp_path / f"{name}.miner.zarr"
        shutil.copytree(DATA / f"{name}.miner.zarr", path)
        return path

    return make


@pytest.mark.parametrize("name", sorted(STORES))
def test_legacy_store_loads_and_decodes_exactly(name):
    path = DATA / f"{name}.miner.zarr"
    assert json.loads((path / ".zattrs").read_text())["format_version"] == STORES[name]
    before = _snapshot(path)
    model = nm.load(path)
    expected = np.load(DATA / f"{name}_decoded.npy")
    decoded = model.decode(0)
    assert decoded.dtype == expected.dtype
    assert_decodes_to(decoded, expected)
    region = (slice(5, 21), slice(3, 30))
    assert_decodes_to(model.decode(0, region), expected[region])
    assert_decodes_to(model.as_pyramid()[0][:16, :16].compute(), expected[:16, :16])
    source = np.load(DATA / f"{name}_input.npy")
    assert decoded.shape == source.shape and model.layout.dtype == source.dtype.str
    assert _snapshot(path) == before  # read-only: nothing written, not even a lock file
    assert sorted(p.name for p in DATA.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("name", sorted(STORES))
def test_legacy_store_is_resaved_in_the_current_format(name, tmp_path):
    model = nm.load(DATA / f"{name}.miner.zarr")
    path = tmp_path / "resaved.miner.zarr"
    model.save(path)
    assert json.loads((path / ".zattrs").read_text())["format_version"] == 3
    resaved = nm.load(path)
    assert resaved.n_parameters == model.n_parameters
    assert resaved.config == model.config and resaved.layout == model.layout
    assert_decodes_to(resaved.decode(0), np.load(DATA / f"{name}_decoded.npy"))
    for level in range(model.n_levels):
        np.testing.assert_array_equal(resaved.decode(level), model.decode(level))


@pytest.mark.parametrize("name", sorted(STORES))
def test_legacy_store_is_read_only(name, copy):
    path = copy(name)
    with pytest.raises(nm.ModelFormatError, match="read-only.*save it again"):
        ModelStore.open(path)


def test_format2_metadata(copy):
    model = nm.load(copy("format2_gray"))
    assert model.metadata["fit_status"] == "complete"
    assert model.levels[0].n_mlps == 33 and model.levels[1].n_mlps == 12


def _flip_last_byte(chunk: Path) -> None:
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0xFF
    chunk.write_bytes(bytes(raw))


def test_damaged_format1_chunk(copy):
    path = copy("format1_rgb")
    _flip_last_byte(path / "levels" / "0" / "weight_1" / "0.0.0")
    with pytest.raises(nm.ModelFormatError, match="levels/0/weight_1") as error:
        nm.load(path)  # format 1 is read whole, at once
    assert str(path.resolve()) in str(error.value)


def test_missing_format1_chunk(copy):
    path = copy("format1_rgb")
    (path / "levels" / "1" / "bias_2" / "0.0.0").unlink()
    with pytest.raises(nm.ModelFormatError, match="levels/1/bias_2.*checksum"):
        nm.load(path)


def test_format1_non_finite_weight_with_a_matching_checksum(copy):
    path = copy("format1_rgb")
    name = "levels/0/weight_1"
    spec = ArraySpec.from_zarray(json.loads((path / name / ".zarray").read_text()), name)
    weights = read_chunk(path / name, spec, (0, 0, 0), name).copy()
    weights[0, 0, 0] = np.nan
    write_chunk(path / name, spec, (0, 0, 0), weights)
    attributes = json.loads((path / ".zattrs").read_text())
    attributes["arrays"][name]["sha256"] = hashlib.sha256(weights.tobytes()).hexdigest()
    (path / ".zattrs").write_text(json.dumps(attributes))
    with pytest.raises(nm.ModelFormatError, match="non-finite"):
        nm.load(path)


@pytest.mark.parametrize("array", ["weight_0", "bias_3", "mask"])
def test_damaged_format2_chunk(copy, array):
    path = copy("format2_gray")
    chunk = next(p for p in sorted((path / "levels" / "0" / array).iterdir()) if p.name[0] != ".")
    _flip_last_byte(chunk)
    model = nm.load(path)  # format 2 is read tile by tile
    with pytest.raises(nm.ModelFormatError) as error:
        model.decode(0)
    assert str(path.resolve()) in str(error.value)


def test_missing_format2_chunk(copy):
    path = copy("format2_gray")
    (path / "levels" / "0" / "weight_2" / "1.1.0.0").unlink()
    model = nm.load(path)
    with pytest.raises(nm.ModelFormatError, match=r"tile \(1, 1\) of level 0.*checksum"):
        model.decode(0)


def test_missing_format2_record(copy):
    path = copy("format2_gray")
    (path / "levels" / "1" / "tiles" / "1.1.0").unlink()
    with pytest.raises(nm.ModelFormatError, match="marked complete"):
        nm.load(path)


def test_format2_record_damaged(copy):
    path = copy("format2_gray")
    record = path / "levels" / "0" / "tiles" / "0.0.0"
    record.write_bytes(record.read_bytes() + b"\0")
    with pytest.raises(nm.ModelFormatError, match="record of tile"):
        nm.load(path)


@pytest.mark.parametrize("name", ["\u00b2.0.0", "\u0660.\u0660.0", "x.0.0", "0.0.0.tmp-1234"])
def test_format2_files_that_are_not_records_are_ignored(copy, name):
    path = copy("format2_gray")
    (path / "levels" / "0" / "tiles" / name).write_bytes(b"junk")
    decoded = nm.load(path).decode(0)
    assert_decodes_to(decoded, np.load(DATA / "format2_gray_decoded.npy"))


def test_format2_symlinked_array_is_refused(copy, tmp_path):
    path = copy("format2_gray")
    shutil.move(path / "levels" / "0" / "weight_0", tmp_path / "outside")
    (path / "levels" / "0" / "weight_0").symlink_to(tmp_path / "outside")
    with pytest.raises(nm.ModelFormatError, match="symbolic link"):
        nm.load(path)
