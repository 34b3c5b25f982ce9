"""Lazy dask pyramids of fitted models: shapes, chunks, exact values, laziness and names."""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
import pytest
import torch

from napari_miner import MinerConfig, MinerModel, fit
from napari_miner.core.model import LevelParams
from napari_miner.io.lazy import dask_pyramid, model_fingerprint

CONFIG = MinerConfig(n_levels=3, block_size=8, max_steps=20)


def _fit(image, **kwargs):
    config = kwargs.pop("config", CONFIG)
    return fit(image, config, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def models() -> dict[str, MinerModel]:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:83, 0:101]
    gray = (np.sin(y / 6.0) * np.cos(x / 9.0) * 1000).astype(np.int16)
    return {
        "gray": _fit(gray),  # odd sides, not multiples of the block or chunk size
        "rgb": _fit(rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)),
        "rgba": _fit(rng.random((40, 37, 4), dtype=np.float32)),
        "channels": _fit(rng.random((2, 40, 52), dtype=np.float32), channel_axis=0),
        "volume": _fit(
            rng.random((20, 27, 35), dtype=np.float32), config=CONFIG.replace(block_size=4)
        ),
    }


def _spatial_axes(model):
    return [a for a in range(len(model.shape)) if a != model.layout.channel_axis]


def _area_downsample(x: np.ndarray, spatial_axes, dtype) -> np.ndarray:
    """Reference 2× area average (edge-padded odd sides), rounded like decoding."""
    x = x.astype(np.float64)
    pad = [(0, x.shape[a] % 2 if a in spatial_axes else 0) for a in range(x.ndim)]
    x = np.pad(x, pad, mode="edge")
    shape, pair_axes = [], []
    for a, s in enumerate(x.shape):
        if a in spatial_axes:
            shape += [s // 2, 2]
            pair_axes.append(len(shape) - 1)
        else:
            shape += [s]
    grouped = x.reshape(shape)
    mean = grouped.mean(axis=tuple(pair_axes))
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return mean >= 0.5
    if dtype.kind in "iu":
        return np.rint(mean).astype(dtype)
    return mean.astype(dtype)


def _assert_decodes_match(actual: np.ndarray, expected: np.ndarray, model) -> None:
    """Equal up to float rounding: a region decode evaluates the MLPs in other batch sizes than a
    full decode (differences ~1e-7 of the value range), which can flip an integer's rounding."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * model.layout.value_scale)
    else:
        diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
        assert diff.max() <= 1 and np.count_nonzero(diff) <= 1e-3 * diff.size + 1


@pytest.mark.parametrize("kind", ["gray", "rgb", "rgba", "channels", "volume"])
def test_model_levels_shapes_dtypes_chunks_and_values(models, kind):
    model = models[kind]
    pyramid = dask_pyramid(model, chunk_blocks=2, min_side=10**6)
    assert len(pyramid) == model.n_levels
    b = model.config.block_size
    spatial = _spatial_axes(model)
    # one block deep along a volume's leading axis, chunk_blocks blocks in-plane
    sides = [b] * (len(spatial) - 2) + [2 * b] * 2
    for j, level in enumerate(pyramid):
        assert isinstance(level, da.Array)
        assert level.shape == model.decoded_shape(j)
        assert level.dtype == model.dtype
        for axis, chunks in enumerate(level.chunks):
            if axis in spatial:
                side = sides[spatial.index(axis)]
                assert all(c == side for c in chunks[:-1]), (j, axis, chunks)
                assert 0 < chunks[-1] <= side
            else:  # the channel axis is never split
                assert chunks == (level.shape[axis],)
        for index in np.ndindex(*level.numblocks):  # every chunk is exactly its region's decode
            region = tuple(
                slice(sum(level.chunks[a][: index[a]]), sum(level.chunks[a][: index[a] + 1]))
                for a in spatial
            )
            np.testing.assert_array_equal(level.blocks[index].compute(), model.decode(j, region))
        _assert_decodes_match(level.compute(), model.decode(j), model)
    assert max(len(c) for c in pyramid[0].chunks) > 1  # really several chunks


def test_explicit_chunk_blocks_per_axis(models):
    model = models["volume"]
    level = dask_pyramid(model, chunk_blocks=(2, 3, 1), min_side=10**6)[0]
    assert level.chunksize == (8, 12, 4)
    with pytest.raises(ValueError, match="one entry per spatial axis"):
        dask_pyramid(model, chunk_blocks=(2, 3))


def test_computing_one_chunk_decodes_only_that_region(models, monkeypatch):
    model = models["gray"]
    calls = []
    decode = model.decode

    def spy(level=0, region=None, device="cpu"):
        calls.append((level, region))
        return decode(level, region, device)

    monkeypatch.setattr(model, "decode", spy)
    pyramid = dask_pyramid(model, chunk_blocks=2, min_side=10**6)
    assert calls == []  # building the pyramid decodes nothing

    chunk = pyramid[0].blocks[1, 2].compute()
    assert calls == [(0, (slice(16, 32), slice(32, 48)))]
    np.testing.assert_array_equal(chunk, decode(0, region=(slice(16, 32), slice(32, 48))))

    calls.clear()
    tile = pyramid[1][3:9, 20:25].compute()  # inside one chunk of level 1
    assert calls == [(1, (slice(0, 16), slice(16, 32)))]
    np.testing.assert_array_equal(tile, decode(1, (slice(0, 16), slice(16, 32)))[3:9, 4:9])

    calls.clear()
    corner = pyramid[0][-3:, -3:].compute()  # the last, partial chunk
    assert calls == [(0, (slice(80, 83), slice(96, 101)))]
    np.testing.assert_array_equal(corner, decode(0, (slice(80, 83), slice(96, 101)))[:, -3:])


def test_rgb_chunk_keeps_all_channels(models, monkeypatch):
    model = models["rgb"]
    calls = []
    decode = model.decode
    monkeypatch.setattr(
        model, "decode", lambda level=0, region=None: calls.append(region) or decode(level, region)
    )
    level = dask_pyramid(model, chunk_blocks=2, min_side=10**6)[0]
    out = level[20:22, 40:41, 1].compute()
    assert calls == [(slice(16, 32), slice(32, 48))]
    np.testing.assert_array_equal(out, decode(0, calls[0])[4:6, 8:9, 1])


@pytest.mark.parametrize("kind", ["gray", "rgb", "channels", "volume"])
def test_extra_levels_downsample_the_coarsest_level(models, kind):
    model = models[kind]
    spatial = _spatial_axes(model)
    coarsest = model.level_shape(model.n_levels - 1)
    min_side = 3
    pyramid = dask_pyramid(model, chunk_blocks=1, min_side=min_side)
    n_extra = len(pyramid) - model.n_levels
    assert n_extra >= 1
    side = min(coarsest)
    for _ in range(n_extra):
        assert side > min_side  # each extra level was needed ...
        side = math.ceil(side / 2)
    assert side <= min_side  # ... and they stop once the smallest side is small enough
    assert min(pyramid[-1].shape[a] for a in spatial) <= min_side

    expected = model.decode(model.n_levels - 1)
    for level in pyramid[model.n_levels :]:
        expected = _area_downsample(expected, spatial, model.dtype)
        assert level.shape == expected.shape
        assert level.dtype == model.dtype
        np.testing.assert_allclose(level.compute(), expected, rtol=1e-6, atol=1e-6)
        # chunks stay the size of the model's chunks (merged, then halved)
        for a in spatial:
            assert max(level.chunks[a]) <= max(pyramid[0].chunks[a])


def test_no_extra_level_when_the_coarsest_is_small_enough(models):
    model = models["gray"]
    smallest = min(model.level_shape(model.n_levels - 1))
    assert len(dask_pyramid(model, min_side=smallest)) == model.n_levels
    assert len(dask_pyramid(model, min_side=smallest - 1)) == model.n_levels + 1
    assert len(model.as_pyramid()) == model.n_levels  # default min_side=512


def test_default_chunks_are_16_blocks(models):
    model = models["volume"]  # 20 x 27 x 35 voxels, 4³ blocks
    level = dask_pyramid(model)[0]
    assert level.chunks == ((4,) * 5, (27,), (35,))  # one block deep, 16 blocks (64) in-plane


def test_names_depend_on_the_model_only(models, tmp_path):
    model = models["gray"]
    names = [level.name for level in dask_pyramid(model, chunk_blocks=2, min_side=3)]
    assert len(set(names)) == len(names)
    again = [level.name for level in dask_pyramid(model, chunk_blocks=2, min_side=3)]
    assert again == names

    # a model read from a store: named by the store and its tiles' checksums, every time alike
    path = tmp_path / "gray.miner.zarr"
    model.save(path)
    from napari_miner import load

    stored = [lv.name for lv in dask_pyramid(load(path), chunk_blocks=2, min_side=3)]
    assert [lv.name for lv in dask_pyramid(load(path), chunk_blocks=2, min_side=3)] == stored
    models["rgb"].save(path)  # another model in the same place: other names
    changed = [lv.name for lv in dask_pyramid(load(path), chunk_blocks=2, min_side=3)]
    assert not set(changed) & set(stored)

    # other chunking, other keys (a chunk key must always mean the same pixels)
    base = dask_pyramid(model, chunk_blocks=2, min_side=3)
    other = dask_pyramid(model, chunk_blocks=1, min_side=3)
    assert len(other) == len(base)
    for a, b in zip(base, other, strict=True):
        assert (a.name == b.name) == (a.chunks == b.chunks)
    assert other[0].name != base[0].name

    # one weight changed: every name changes
    levels = [
        LevelParams(lv.grid, lv.block_ids.clone(), [w.clone() for w in lv.weights], lv.biases)
        for lv in model.levels
    ]
    levels[0].weights[-1][0, 0, 0] += 1e-3
    changed = MinerModel(model.layout, model.config, levels, model.metadata)
    changed_names = [lv.name for lv in dask_pyramid(changed, chunk_blocks=2, min_side=3)]
    assert not set(changed_names) & set(names)


def test_another_seed_gives_other_names():
    image = np.random.default_rng(3).random((24, 24), dtype=np.float32)
    a = _fit(image, config=CONFIG.replace(max_steps=5, seed=1))
    b = _fit(image, config=CONFIG.replace(max_steps=5, seed=2))
    assert model_fingerprint(a) != model_fingerprint(b)
    assert dask_pyramid(a)[0].name != dask_pyramid(b)[0].name


def test_fingerprint_is_cached_but_follows_in_place_changes(models, monkeypatch):
    model = models["gray"]
    levels = [
        LevelParams(lv.grid, lv.block_ids, [w.clone() for w in lv.weights], lv.biases)
        for lv in model.levels
    ]
    copy = MinerModel(model.layout, model.config, levels)
    first = model_fingerprint(copy)
    hashed = []
    blake2b = __import__("hashlib").blake2b
    monkeypatch.setattr(
        "napari_miner.core.fingerprint.hashlib.blake2b",
        lambda **kw: hashed.append(1) or blake2b(**kw),
    )
    assert model_fingerprint(copy) == first
    assert hashed == []  # cached
    with torch.no_grad():
        copy.levels[1].weights[0].mul_(2)
    assert model_fingerprint(copy) != first
    assert hashed == [1]


def test_pyramid_computes_in_parallel_with_the_threaded_scheduler(models):
    model = models["rgb"]
    pyramid = dask_pyramid(model, chunk_blocks=1, min_side=4)
    with dask.config.set(scheduler="threads", num_workers=2):
        values = dask.compute(*pyramid)
    for j in range(model.n_levels):
        _assert_decodes_match(values[j], model.decode(j), model)


@pytest.mark.parametrize(
    "key",
    [
        (slice(3, 20), slice(None, None, 3)),
        (5, slice(30, 2, -2)),
        (slice(None, None, -1), -1),
        (slice(36, None, -5), slice(7, 8), 2),
        (Ellipsis, 3),
        (slice(10, 10),),
    ],
)
def test_level_view_indexing_matches_numpy(models, key):
    """The array-like behind each level decodes the bounding box of any basic index."""
    from napari_miner.io.lazy import LevelArray

    model = models["rgba"]  # float32, 40 x 37 x 4
    view = LevelArray(model.decoded_shape(0), model.dtype, model.layout.channel_axis,
                      lambda region: model.decode(0, region))  # fmt: skip
    expected = model.decode(0)[key]
    out = view[key]
    assert out.shape == expected.shape and out.dtype == expected.dtype
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
