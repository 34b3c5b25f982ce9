import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from miner_test_data import smooth

import napari_miner as nm
from napari_miner.io import atomic, store
from napari_miner.io.stored_level import StoredLevel

TINY = nm.MinerConfig(n_levels=3, block_size=8, max_steps=20)


def _inputs():
    rng = np.random.default_rng(7)
    return {
        "gray": rng.random((37, 50), dtype=np.float32),
        "rgb": rng.integers(0, 256, size=(45, 29, 3), dtype=np.uint8),
        "uint16": ((smooth((40, 56), frequency=5.0) + 1) * 3000).astype(np.uint16),
        "volume": smooth((19, 23, 17), seed=3, frequency=5.0).astype(np.float32),
    }


@pytest.fixture(scope="module")
def models():
    return {name: nm.fit(data, TINY, device="cpu") for name, data in _inputs().items()}


@pytest.fixture(scope="module")
def gray_model(models):
    return models["gray"]


def _all_mlps(level):
    present, weights, biases = level.gather(torch.arange(level.grid.n_blocks))
    return present, weights, biases


def _assert_same_model(loaded, model):
    assert isinstance(loaded, nm.MinerModel)
    assert loaded.config == model.config
    assert loaded.layout == model.layout
    assert loaded.n_parameters == model.n_parameters
    assert {k: v for k, v in loaded.metadata.items() if k != "fit_status"} == {
        k: v for k, v in model.metadata.items() if k != "fit_status"
    }
    assert loaded.metadata["fit_status"] == "complete"
    assert loaded.n_levels == model.n_levels
    for level, (a, b) in enumerate(zip(loaded.levels, model.levels, strict=True)):
        assert isinstance(a, StoredLevel)  # read lazily, tile by tile
        assert a.grid == b.grid
        assert a.stats == b.stats
        assert a.n_mlps == b.n_mlps
        np.testing.assert_array_equal(a.active_mask(), b.active_mask())
        present_a, weights_a, biases_a = _all_mlps(a)
        present_b, weights_b, biases_b = _all_mlps(b)
        assert torch.equal(present_a, present_b)
        for x, y in zip(weights_a + biases_a, weights_b + biases_b, strict=True):
            assert x.dtype == torch.float32 and torch.equal(x, y)
        assert torch.equal(loaded.decode_normalized(level), model.decode_normalized(level))
        np.testing.assert_array_equal(loaded.decode(level), model.decode(level))


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", ["gray", "rgb", "uint16", "volume"])
def test_save_load_round_trip(models, name, tmp_path):
    model = models[name]
    path = tmp_path / f"{name}.miner.zarr"
    model.save(path)
    loaded = nm.load(path)
    _assert_same_model(loaded, model)
    assert loaded.dtype == model.dtype and loaded.decode().shape == _inputs()[name].shape
    region = tuple(slice(3, 11) for _ in model.layout.spatial_shape)
    np.testing.assert_array_equal(loaded.decode(0, region), model.decode(0, region))
    assert _siblings(path) == []  # no temporary directory, no lock file left
    # a loaded model saved again gives the same store content
    again = tmp_path / f"{name}-again.miner.zarr"
    loaded.save(again)
    _assert_same_model(nm.load(again), model)


def test_store_is_a_plain_zarr_group(gray_model, tmp_path):
    path = tmp_path / "m.miner.zarr"
    gray_model.save(str(path))
    assert (path / ".zgroup").is_file()  # zarr format 2
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["format"] == store.FORMAT_NAME == "napari-miner.model"
    assert group.attrs["format_version"] == store.FORMAT_VERSION == 3
    assert group.attrs["status"] == "complete"
    assert group.attrs["config"] == TINY.to_dict()
    assert group.attrs["layout"] == gray_model.layout.to_dict()
    from napari_miner.core.mlp_bank import pack_bank
    from napari_miner.core.quantize import decode_packed

    for j, level in enumerate(gray_model.levels):
        assert group.attrs["levels"][j]["bits"] == level.bits == TINY.weight_bits
        mask = group[f"levels/{j}/main/mask"]
        params = group[f"levels/{j}/main/params"]
        scales = group[f"levels/{j}/main/scales"]
        assert mask.dtype == np.uint8 and mask.shape == level.grid.grid_shape
        assert params.dtype == np.uint16 and params.shape[:-1] == level.grid.grid_shape
        assert scales.dtype == np.int16 and scales.shape[:-1] == level.grid.grid_shape
        assert group[f"levels/{j}/records"].dtype == np.uint8
        np.testing.assert_array_equal(mask[...].astype(bool), level.grid.mask(level.block_ids))
        # zarr reads integer codes and scale codes that give back exactly the model's MLPs
        present, weights, biases = level.gather(torch.arange(level.grid.n_blocks))
        sizes = [tuple(w.shape[1:]) for w in weights]
        n = params.shape[-1]
        floats = decode_packed(
            params[...].reshape(-1, n)[present.numpy()],
            scales[...].reshape(-1, scales.shape[-1])[present.numpy()],
            sizes,
        )
        np.testing.assert_array_equal(floats, pack_bank(weights, biases).numpy())


def test_float32_weights_are_stored_as_they_are(tmp_path):
    model = nm.fit(_inputs()["gray"], TINY.replace(weight_bits=None), device="cpu")
    path = tmp_path / "m.miner.zarr"
    model.save(path)
    group = zarr.open_group(str(path), mode="r")
    from napari_miner.core.mlp_bank import pack_bank

    for j, level in enumerate(model.levels):
        assert group.attrs["levels"][j]["bits"] is level.bits is None
        params = group[f"levels/{j}/main/params"]
        assert params.dtype == np.float32 and f"levels/{j}/main/scales" not in group
        present, weights, biases = level.gather(torch.arange(level.grid.n_blocks))
        packed = params[...].reshape(-1, params.shape[-1])[present.numpy()]
        np.testing.assert_array_equal(packed, pack_bank(weights, biases).numpy())
    _assert_same_model(nm.load(path), model)


def test_saving_a_model_to_the_store_it_is_read_from(gray_model, tmp_path):
    path = tmp_path / "m.miner.zarr"
    gray_model.save(path)
    loaded = nm.load(path)
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    loaded.save(path)  # nothing to do: the model already lives there
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()} == before
    mixed = nm.MinerModel(loaded.layout, loaded.config, [gray_model.levels[0], *loaded.levels[1:]])
    with pytest.raises(nm.ModelFormatError, match="read from it"):
        mixed.save(path)
    _assert_same_model(nm.load(path), gray_model)


def test_partial_fit_with_empty_levels_round_trips(tmp_path):
    run = nm.fit_iter(_inputs()["gray"], TINY, device="cpu")
    for event in run:
        if isinstance(event, nm.Progress):
            break
    run.close()
    model = run.model
    assert any(level.n_mlps == 0 for level in model.levels)
    path = tmp_path / "partial.miner.zarr"
    model.save(path)
    _assert_same_model(nm.load(path), model)


def test_non_finite_and_numpy_values_are_stored_as_standard_json(gray_model, tmp_path):
    levels = [level.to("cpu") for level in gray_model.levels]
    levels[0].stats["psnr"] = math.inf
    metadata = {**gray_model.metadata, "loss": math.nan, "low": -math.inf, "n": np.int64(3)}
    model = nm.MinerModel(gray_model.layout, gray_model.config, levels, metadata)
    path = tmp_path / "m.miner.zarr"
    model.save(path)

    def strict(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    for document in path.rglob(".z*"):
        json.loads(document.read_text(), parse_constant=strict)
    loaded = nm.load(path)
    assert loaded.levels[0].stats["psnr"] == math.inf
    assert math.isnan(loaded.metadata["loss"]) and loaded.metadata["low"] == -math.inf
    assert loaded.metadata["n"] == 3


def test_metadata_that_is_not_json_is_refused(gray_model, tmp_path):
    model = nm.MinerModel(
        gray_model.layout, gray_model.config, gray_model.levels, {"bad": object()}
    )
    path = tmp_path / "m.miner.zarr"
    with pytest.raises(nm.ModelFormatError, match="not plain JSON"):
        model.save(path)
    assert not path.exists() and _siblings(path) == []


def test_overwriting_an_existing_model(models, tmp_path):
    path = tmp_path / "m.miner.zarr"
    models["gray"].save(path)
    models["uint16"].save(path)
    _assert_same_model(nm.load(path), models["uint16"])
    assert _siblings(path) == []


def test_saving_into_an_empty_directory(gray_model, tmp_path):
    path = tmp_path / "m.miner.zarr"
    path.mkdir()
    gray_model.save(path)
    _assert_same_model(nm.load(path), gray_model)


# ----------------------------------------------------------------------------------- errors
@pytest.fixture
def saved(gray_model, tmp_path):
    path = tmp_path / "m.miner.zarr"
    gray_model.save(path)
    return path


def _edit_attributes(path: Path, **changes):
    attrs_file = path / ".zattrs"
    attributes = json.loads(attrs_file.read_text())
    attributes.update(changes)
    attrs_file.write_text(json.dumps(attributes))


def test_missing_path(tmp_path):
    with pytest.raises(nm.ModelFormatError, match="does not exist"):
        nm.load(tmp_path / "nothing.miner.zarr")


def test_regular_file_at_path(gray_model, tmp_path):
    path = tmp_path / "m.miner.zarr"
    path.write_bytes(b"not a model")
    with pytest.raises(nm.ModelFormatError, match="is not a model store"):
        nm.load(path)
    with pytest.raises(nm.ModelFormatError, match="not a model store exists there"):
        gray_model.save(path)
    assert path.read_bytes() == b"not a model"
    assert _siblings(path) == []


def test_directory_that_is_not_a_store(gray_model, tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    (path / "precious.txt").write_text("keep me")
    with pytest.raises(nm.ModelFormatError, match="not a napari-miner model store"):
        nm.load(path)
    with pytest.raises(nm.ModelFormatError, match="not overwritten"):
        gray_model.save(path)
    assert (path / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in path.iterdir()) == ["precious.txt"]


def test_missing_parent_directory(gray_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gray_model.save(tmp_path / "no" / "such" / "m.miner.zarr")


def test_wrong_format_name(tmp_path):
    path = tmp_path / "other.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.attrs["format"] = "something-else"
    with pytest.raises(nm.ModelFormatError, match="not a napari-miner model.*something-else"):
        nm.load(path)
    zarr.open_group(str(tmp_path / "bare.zarr"), mode="w", zarr_format=2).attrs["x"] = 1
    with pytest.raises(nm.ModelFormatError, match="no 'format' attribute"):
        nm.load(tmp_path / "bare.zarr")
    zarr.open_group(str(tmp_path / "v3.zarr"), mode="w", zarr_format=3)
    with pytest.raises(nm.ModelFormatError, match="zarr v3 group"):
        nm.load(tmp_path / "v3.zarr")


def test_newer_format_version(saved):
    _edit_attributes(saved, format_version=store.FORMAT_VERSION + 1)
    with pytest.raises(nm.ModelFormatError, match="newer napari-miner.*upgrade"):
        nm.load(saved)


def test_invalid_config_attribute(saved):
    config = json.loads((saved / ".zattrs").read_text())["config"]
    _edit_attributes(saved, config={**config, "unknown_setting": 1})
    with pytest.raises(nm.ModelFormatError, match="invalid config.*unknown_setting"):
        nm.load(saved)


def test_invalid_layout_attribute(saved):
    layout = json.loads((saved / ".zattrs").read_text())["layout"]
    _edit_attributes(saved, layout={**layout, "dtype": "|O"})
    with pytest.raises(nm.ModelFormatError, match="invalid layout"):
        nm.load(saved)


def test_arrays_that_do_not_fit_the_config(saved):
    config = json.loads((saved / ".zattrs").read_text())["config"]
    _edit_attributes(saved, config={**config, "hidden_width": config["hidden_width"] + 1})
    with pytest.raises(nm.ModelFormatError, match=r"levels/0/main/params has shape .* implies"):
        nm.load(saved)


def test_missing_array(saved):
    shutil.rmtree(saved / "levels" / "1" / "main" / "params")
    with pytest.raises(nm.ModelFormatError, match="levels/1/main/params is missing"):
        nm.load(saved)


def test_missing_chunk_is_detected(saved):
    (saved / "levels" / "0" / "main" / "params" / "0.0.0").unlink()  # zarr alone would read zeros
    with pytest.raises(
        nm.ModelFormatError,
        match=r"tile \(0, 0\) of level 0.*levels/0/main/params/0.0.0 is missing",
    ):
        nm.load(saved)


def test_truncated_chunk_is_detected(saved):
    chunk = saved / "levels" / "0" / "main" / "params" / "0.0.0"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    model = nm.load(saved)  # read lazily: found when the tile is read
    with pytest.raises(nm.ModelFormatError, match=f"{chunk}.*damaged"):
        model.decode(0)


@pytest.mark.parametrize("offset", [-1, 20])
def test_corrupted_chunk_is_detected(saved, offset):
    chunk = saved / "levels" / "1" / "main" / "params" / "0.0.0"
    assert json.loads((chunk.parent / ".zarray").read_text())["compressor"]["id"] == "blosc"
    raw = bytearray(chunk.read_bytes())
    raw[offset] ^= 0xFF  # flip bits in the payload
    chunk.write_bytes(bytes(raw))
    model = nm.load(saved)
    with pytest.raises(nm.ModelFormatError, match=r"tile \(0, 0\) of level 1") as error:
        model.decode(0)
    assert str(saved) in str(error.value)


@pytest.mark.parametrize(
    ("key", "codec"),
    [
        ("filters", [{"id": "pickle", "protocol": 5}]),
        ("filters", [{"id": "fixedscaleoffset", "offset": 0, "scale": 1, "dtype": "<f4"}]),
        ("compressor", {"id": "zlib", "level": 1}),
        ("compressor", {"id": "pickle"}),
    ],
)
def test_codecs_outside_the_whitelist_are_refused(saved, key, codec):
    meta_file = saved / "levels" / "0" / "main" / "params" / ".zarray"
    meta = json.loads(meta_file.read_text())
    meta[key] = codec
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(nm.ModelFormatError, match="levels/0/main/params"):
        nm.load(saved)


def test_loading_never_unpickles(saved, gray_model, monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("the loader must not unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = nm.load(saved)
    _assert_same_model(loaded, gray_model)
    loaded.save(tmp_path / "copy.miner.zarr")
    _assert_same_model(nm.load(tmp_path / "copy.miner.zarr"), gray_model)


# -------------------------------------------------------------------------------- atomicity
def _fail_on_second_tile(monkeypatch):
    real = store.ModelStore.write_tile
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated crash while writing")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(store.ModelStore, "write_tile", failing)


def test_failed_save_leaves_nothing(gray_model, tmp_path, monkeypatch):
    _fail_on_second_tile(monkeypatch)
    path = tmp_path / "m.miner.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        gray_model.save(path)
    assert not os.path.lexists(path)
    assert _siblings(path) == []
    with pytest.raises(nm.ModelFormatError):
        nm.load(path)


def test_failed_save_keeps_the_previous_model(models, saved, monkeypatch):
    _fail_on_second_tile(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        models["uint16"].save(saved)
    _assert_same_model(nm.load(saved), models["gray"])
    assert _siblings(saved) == []


def test_failed_rename_restores_the_previous_model(models, saved, monkeypatch):
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(src).startswith(f".{saved.name}.tmp-"):
            raise OSError("simulated rename failure")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated rename failure"):
        models["uint16"].save(saved)
    monkeypatch.undo()
    _assert_same_model(nm.load(saved), models["gray"])
    assert _siblings(saved) == []


def test_store_without_attributes_never_loads(gray_model, tmp_path, monkeypatch):
    # a store whose arrays were written but whose attributes were not is not a model
    real_write = store.write_json

    def no_attributes(path, document):
        if path.name != ".zattrs":
            real_write(path, document)

    monkeypatch.setattr(store, "write_json", no_attributes)
    path = tmp_path / "m.miner.zarr"
    gray_model.save(path)
    assert (path / "levels" / "0" / "main" / "params" / "0.0.0").is_file()
    assert not (path / ".zattrs").exists()
    with pytest.raises(nm.ModelFormatError, match="not a napari-miner model store"):
        nm.load(path)


def test_interrupted_swap_is_reported(saved, tmp_path):
    backup = tmp_path / f".{saved.name}.old-1234abcd"
    os.replace(saved, backup)  # as if the process died between moving aside and renaming
    with pytest.raises(nm.ModelFormatError, match=r"interrupted.*\.old-1234abcd"):
        nm.load(saved)


def test_save_rejects_non_models(tmp_path):
    with pytest.raises(TypeError):
        store.save_model("not a model", tmp_path / "m.miner.zarr")
    assert list(tmp_path.iterdir()) == []


def test_a_fit_writes_weights_fast_and_a_save_compacts_them(tmp_path, monkeypatch):
    from napari_miner.io.chunks import FIT_CLEVEL

    levels_used = []
    write = store.write_chunk

    def spy(directory, spec, index, data, durable=False):
        if directory.name == "params":
            levels_used.append(spec.compressor["clevel"])
        write(directory, spec, index, data, durable)

    monkeypatch.setattr(store, "write_chunk", spy)
    rng = np.random.default_rng(5)
    image = (rng.random((96, 96)) * 255).astype(np.uint8)
    config = nm.MinerConfig(n_levels=2, block_size=16, max_steps=20, max_splits=0)
    fitted = nm.fit(image, config, device="cpu", store=tmp_path / "fit.miner.zarr")
    assert levels_used and set(levels_used) == {FIT_CLEVEL}
    levels_used.clear()
    fitted.save(tmp_path / "saved.miner.zarr")
    assert levels_used and set(levels_used) == {9}
    np.testing.assert_array_equal(
        nm.load(tmp_path / "saved.miner.zarr").decode(0), fitted.decode(0)
    )
