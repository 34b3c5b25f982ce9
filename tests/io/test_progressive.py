"""The progressive pyramid answers at once, decodes in the background and never shows stale tiles."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import napari_miner as nm
from napari_miner.io.lazy import dask_pyramid
from napari_miner.io.progressive import ProgressivePyramid

CONFIG = nm.MinerConfig(n_levels=3, block_size=8, max_steps=20)


@pytest.fixture(scope="module")
def rgb_model() -> nm.MinerModel:
    rng = np.random.default_rng(0)
    image = (rng.random((150, 260, 3)) * 255).astype(np.uint8)
    return nm.fit(image, CONFIG, device="cpu")


@pytest.fixture
def pyramid(rgb_model):
    made = []

    def make(**kwargs) -> ProgressivePyramid:
        made.append(ProgressivePyramid(rgb_model, **kwargs))
        return made[-1]

    yield make
    for p in made:
        p.close()


def test_levels_have_the_lazy_pyramids_shapes(rgb_model, pyramid):
    p = pyramid(chunk_side=32, min_side=20)
    lazy = dask_pyramid(rgb_model, min_side=20)
    assert [level.shape for level in p.levels] == [level.shape for level in lazy]
    assert all(level.dtype == np.uint8 for level in p.levels)


def test_a_read_answers_at_once_then_the_values_arrive(rgb_model, pyramid):
    ready = threading.Event()
    p = pyramid(chunk_side=32)
    p.on_ready = ready.set
    region = (slice(10, 100), slice(40, 200))
    first = p.levels[0][region]
    assert first.shape == (90, 160, 3)
    assert not p.last_complete and p.pending() > 0
    assert ready.wait(60)
    assert p.wait_until_idle(60) and p.pending() == 0
    np.testing.assert_array_equal(p.levels[0][region], rgb_model.decode(0, region))
    assert p.last_complete


def test_every_level_ends_up_exact(rgb_model, pyramid):
    p = pyramid(chunk_side=32, min_side=20)
    lazy = dask_pyramid(rgb_model, min_side=20)
    for level, expected in zip(p.levels, lazy, strict=True):
        level[...]
        assert p.wait_until_idle(60)
        np.testing.assert_array_equal(level[...], expected.compute())


def test_missing_tiles_stand_in_as_the_coarser_level(rgb_model, pyramid):
    p = pyramid(chunk_side=32)
    p.levels[1][...]
    assert p.wait_until_idle(60)
    p._schedule([], [], [])  # nothing queued: see what a read of level 0 shows before decoding
    with p._wake:
        p._closed = True  # keep the background thread from decoding the request below
        p._wake.notify_all()
    shown = p.levels[0][0:64, 0:64]
    coarse = rgb_model.decode(1, (slice(0, 32), slice(0, 32)))
    np.testing.assert_array_equal(shown, coarse.repeat(2, axis=0).repeat(2, axis=1))


def test_visible_tiles_come_before_prefetch(rgb_model, pyramid):
    p = pyramid(chunk_side=32)
    order = []
    decode = p._decode
    p._decode = lambda key: order.append(key) or decode(key)
    p.levels[0][32:64, 64:96]  # one chunk: (1, 2)
    assert p.wait_until_idle(60)
    assert order[0] == (0, (1, 2))
    assert (0, (0, 1)) in order[1:] and any(level == 1 for level, _ in order)  # neighbours, coarser


def test_a_new_view_drops_what_the_old_one_queued(rgb_model, pyramid):
    p = pyramid(chunk_side=32)
    with p._wake:
        p._busy = (9, (9, 9))  # hold the background thread off while we queue
        p._closed = True
    p.levels[0][0:32, 0:32]
    p.levels[0][96:128, 224:256]
    assert (0, (0, 0)) not in p._queue and p._queue[0] == (0, (3, 7))


def test_a_changed_model_shows_no_stale_tiles(rgb_model, pyramid):
    levels = [level.to("cpu") for level in rgb_model.levels]
    model = nm.MinerModel(rgb_model.layout, rgb_model.config, levels)
    p = ProgressivePyramid(model, chunk_side=32)
    try:
        region = (slice(0, 64), slice(0, 64))
        p.levels[0][region]
        assert p.wait_until_idle(60)
        before = p.levels[0][region]
        with torch.no_grad():
            model.levels[0].biases[-1].add_(0.2)  # every level-0 block brighter
        stale = p.levels[0][region]
        assert not np.array_equal(stale, before) or not p.last_complete
        assert p.wait_until_idle(60)
        np.testing.assert_array_equal(p.levels[0][region], model.decode(0, region))
    finally:
        p.close()


def test_the_cache_keeps_to_its_budget(rgb_model, pyramid):
    budget = 3 * 32 * 32 * 3
    p = pyramid(chunk_side=32, cache_bytes=budget)
    p.levels[0][0:32, 0:32]
    assert p.wait_until_idle(60)
    assert p._cached <= budget and (0, (0, 0)) in p._cache  # prefetch never evicts the view
    p.levels[0][...]  # a view larger than the budget is kept whole while it is shown
    assert p.wait_until_idle(60)
    np.testing.assert_array_equal(p.levels[0][...], rgb_model.decode(0))


def test_decoding_errors_are_kept_not_raised(rgb_model, pyramid):
    p = pyramid(chunk_side=32)

    def broken(key):
        raise RuntimeError("no decode")

    p._decode = broken
    p.levels[0][0:8, 0:8]
    assert p.wait_until_idle(60)
    assert p.errors and isinstance(p.errors[0], RuntimeError)
    assert not p.last_complete


def test_close_stops_the_thread(rgb_model):
    p = ProgressivePyramid(rgb_model, chunk_side=32)
    p.levels[0][...]
    p.close()
    assert not p._thread.is_alive()


def test_missing_tiles_stand_in_as_any_coarser_level_decoded(rgb_model, pyramid):
    p = pyramid(chunk_side=32)
    p.levels[2][...]  # only level 2 decoded
    assert p.wait_until_idle(60)
    with p._wake:
        p._closed = True  # keep the background thread from decoding what is asked below
        p._wake.notify_all()
    p._cache = type(p._cache)((k, v) for k, v in p._cache.items() if k[0] == 2)
    shown = p.levels[0][0:64, 0:64]
    coarse = rgb_model.decode(2, (slice(0, 16), slice(0, 16)))
    np.testing.assert_array_equal(shown, coarse.repeat(4, axis=0).repeat(4, axis=1))


def test_a_chunk_that_fails_is_not_tried_again(rgb_model, pyramid):
    p = pyramid(chunk_side=32)
    tried = []

    def broken(key):
        tried.append(key)
        raise RuntimeError("damaged tile")

    p._decode = broken
    for _ in range(3):  # the view asked for again and again, as a viewer redrawing does
        p.levels[0][0:8, 0:8]
        assert p.wait_until_idle(60)
    assert tried.count((0, (0, 0))) == 1 and p.pending() == 0 and not p.last_complete
