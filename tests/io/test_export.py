"""OME-Zarr export: read back with ome-zarr-py and napari-ome-zarr, values equal model.decode."""

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from miner_test_data import intensity_volume, smooth

import napari_miner as nm
from napari_miner.core.errors import OutputExistsError
from napari_miner.io.export import default_chunks, export_ome_zarr

TINY = nm.MinerConfig(n_levels=3, block_size=8, max_steps=20)


@pytest.fixture(scope="module")
def models():
    from skimage import data

    gray = ((smooth((37, 50), frequency=5.0) + 1) / 2).astype(np.float32)  # odd sides
    rgb = data.astronaut()[::8, ::8]  # 64x64x3 uint8
    volume = intensity_volume((20, 24, 18), seed=2)
    return {
        "gray": nm.fit(gray, TINY, device="cpu"),
        "rgb": nm.fit(rgb, TINY, device="cpu"),
        "volume": nm.fit(
            volume,
            nm.MinerConfig.for_volume(occupancy=False, n_levels=2, block_size=8, max_steps=20),
            device="cpu",
        ),
    }


def _read(path: Path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    location = parse_url(str(path))
    assert location is not None, f"ome-zarr cannot open {path}"
    nodes = list(Reader(location)())
    return nodes[0]


def _ome_order(model, values: np.ndarray) -> np.ndarray:
    axis = model.layout.channel_axis
    return values if axis is None else np.moveaxis(values, axis, 0)


def _multiscale(path: Path) -> dict:
    attributes = zarr.open_group(str(path), mode="r").attrs.asdict()
    return (attributes.get("ome") or attributes)["multiscales"][0]


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


@pytest.mark.parametrize(
    ("name", "axes"),
    [
        ("gray", [("y", "space"), ("x", "space")]),
        ("rgb", [("c", "channel"), ("y", "space"), ("x", "space")]),
        ("volume", [("z", "space"), ("y", "space"), ("x", "space")]),
    ],
)
def test_export_reads_back_with_ome_zarr(models, tmp_path, name, axes):
    model = models[name]
    path = tmp_path / f"{name}.ome.zarr"
    export_ome_zarr(model, path, chunk=16, n_levels=model.n_levels)

    node = _read(path)
    assert [(a["name"], a["type"]) for a in node.metadata["axes"]] == axes
    assert len(node.data) == model.n_levels
    n_spatial = len(model.layout.spatial_shape)
    for j, level in enumerate(node.data):
        expected = _ome_order(model, model.decode(j))
        assert level.shape == expected.shape
        got = np.asarray(level)
        assert got.dtype == model.dtype
        np.testing.assert_array_equal(got, expected)
        scale, translation = node.metadata["coordinateTransformations"][j]
        assert scale["type"] == "scale" and translation["type"] == "translation"
        spatial_scale = scale["scale"][-n_spatial:]
        assert spatial_scale == [2.0**j] * n_spatial  # exact, also for odd sides (37 -> 19)
        assert translation["translation"][-n_spatial:] == [(2.0**j - 1) / 2] * n_spatial
        if model.layout.channel_axis is not None:
            assert scale["scale"][0] == 1.0 and translation["translation"][0] == 0.0
    assert _siblings(path) == []  # no temporary folder left behind


def test_rgb_channels_first_with_colours(models, tmp_path):
    model = models["rgb"]
    path = tmp_path / "rgb.ome.zarr"
    export_ome_zarr(model, path, n_levels=1)
    array = zarr.open_array(str(path / "s0"), mode="r")
    assert array.shape == (3, 64, 64)  # (Y, X, 3) -> (c, y, x)
    attributes = zarr.open_group(str(path), mode="r").attrs.asdict()["ome"]
    assert attributes["version"] == "0.5"
    channels = attributes["omero"]["channels"]
    assert [c["color"] for c in channels] == ["FF0000", "00FF00", "0000FF"]
    assert channels[0]["window"] == {"min": 0, "max": 255, "start": 0, "end": 255}
    assert _multiscale(path)["name"] == "rgb"


def test_volume_chunks_are_cubes(models, tmp_path):
    model = models["volume"]
    path = tmp_path / "volume.ome.zarr"
    export_ome_zarr(model, path, chunk=8)  # cubes of at most 8**2 voxels: 4^3
    assert zarr.open_array(str(path / "s0"), mode="r").chunks == (4, 4, 4)
    assert default_chunks(3, 1024) == (64, 64, 64)
    assert default_chunks(2, 1024) == (1024, 1024)
    assert default_chunks(3, (2, 16, 16)) == (2, 16, 16)


def test_chunk_not_a_multiple_of_the_block(models, tmp_path):
    model = models["gray"]
    path = tmp_path / "gray.ome.zarr"
    export_ome_zarr(model, path, chunk=12, n_levels=2)
    array = zarr.open_array(str(path / "s0"), mode="r")
    assert array.chunks == (12, 12)
    np.testing.assert_array_equal(array[:], model.decode(0))


def test_streams_chunk_by_chunk(models, tmp_path, monkeypatch):
    model = models["gray"]
    calls = []
    decode = type(model).decode

    def recording(self, level=0, region=None, device="cpu"):
        calls.append((level, region))
        return decode(self, level, region, device)

    monkeypatch.setattr(type(model), "decode", recording)
    export_ome_zarr(model, tmp_path / "gray.ome.zarr", chunk=16, n_levels=model.n_levels)
    assert calls
    for _, region in calls:  # never a whole level, only chunk-sized regions
        assert region is not None
        assert all(r.stop - r.start <= 16 for r in region)


def test_default_and_extra_levels(models, tmp_path):
    model = models["gray"]
    path = tmp_path / "default.ome.zarr"
    export_ome_zarr(model, path)
    # default: as_pyramid()'s levels (all model levels here: the image is small)
    assert len(_multiscale(path)["datasets"]) == len(model.as_pyramid())

    path = tmp_path / "extra.ome.zarr"
    export_ome_zarr(model, path, n_levels=model.n_levels + 2)
    node = _read(path)
    shapes = [level.shape for level in node.data]
    assert shapes[: model.n_levels] == [model.decoded_shape(j) for j in range(model.n_levels)]
    coarsest = model.decoded_shape(model.n_levels - 1)
    assert shapes[model.n_levels] == tuple(-(-s // 2) for s in coarsest)
    scale = node.metadata["coordinateTransformations"][-1][0]["scale"]
    assert scale == [2.0 ** (model.n_levels + 1)] * 2

    with pytest.raises(nm.ConfigError, match="too many"):
        export_ome_zarr(model, tmp_path / "many.ome.zarr", n_levels=40)
    with pytest.raises(nm.ConfigError, match="n_levels"):
        export_ome_zarr(model, tmp_path / "zero.ome.zarr", n_levels=0)
    with pytest.raises(nm.ConfigError, match="chunk"):
        export_ome_zarr(model, tmp_path / "chunk.ome.zarr", chunk=0)


def test_ngff_04_on_zarr_v2(models, tmp_path):
    model = models["rgb"]
    path = tmp_path / "rgb04.ome.zarr"
    export_ome_zarr(model, path, n_levels=2, ngff_version="0.4")
    attributes = json.loads((path / ".zattrs").read_text())
    assert attributes["multiscales"][0]["version"] == "0.4"
    node = _read(path)
    np.testing.assert_array_equal(np.asarray(node.data[1]), _ome_order(model, model.decode(1)))
    with pytest.raises(nm.ConfigError, match="ngff_version"):
        export_ome_zarr(model, tmp_path / "x.ome.zarr", ngff_version="0.3")


def test_refuses_to_overwrite_unless_asked(models, tmp_path):
    model = models["gray"]
    path = tmp_path / "out.ome.zarr"
    path.mkdir()
    (path / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="overwrite") as info:
        export_ome_zarr(model, path)
    assert isinstance(info.value, nm.MinerError) and isinstance(info.value, FileExistsError)
    assert (path / "keep.txt").read_text() == "precious"

    export_ome_zarr(model, path, n_levels=1, overwrite=True)
    assert not (path / "keep.txt").exists()
    assert _read(path).data[0].shape == model.decode(0).shape
    assert _siblings(path) == []


def test_missing_parent_directory(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_ome_zarr(models["gray"], tmp_path / "no" / "such.ome.zarr")


def test_failure_leaves_nothing_behind(models, tmp_path, monkeypatch):
    model = models["gray"]
    path = tmp_path / "out.ome.zarr"
    path.mkdir()
    (path / "keep.txt").write_text("previous")

    def broken(self, level=0, region=None, device="cpu"):
        raise nm.TrainingError("decoding failed")

    monkeypatch.setattr(type(model), "decode", broken)
    with pytest.raises(nm.TrainingError):
        export_ome_zarr(model, path, overwrite=True)
    assert (path / "keep.txt").read_text() == "previous"  # the previous output is untouched
    assert _siblings(path) == []


def test_napari_ome_zarr_reader(models, tmp_path):
    reader_module = pytest.importorskip("napari_ome_zarr")
    model = models["rgb"]
    path = tmp_path / "rgb.ome.zarr"
    export_ome_zarr(model, path, n_levels=2)
    reader = reader_module.napari_get_reader(str(path))
    assert callable(reader)
    layers = reader(str(path))
    data, kwargs, kind = layers[0]
    assert kind == "image"
    assert [level.shape for level in data] == [(3, 64, 64), (3, 32, 32)]
    assert kwargs["channel_axis"] == 0
    assert kwargs["contrast_limits"] == [[0, 255]] * 3
    np.testing.assert_array_equal(np.asarray(data[0]), _ome_order(model, model.decode(0)))
