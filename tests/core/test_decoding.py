"""The fast decode path equals a plain reference decode; the estimate cache is bounded and fresh."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_miner.core.blocks import local_coordinates
from napari_miner.core.config import MinerConfig
from napari_miner.core.decoding import TiledDecoder, split_bounds, tile_side
from napari_miner.core.estimate_cache import EstimateCache
from napari_miner.core.layout import InputLayout
from napari_miner.core.mlp_bank import bank_decode, bank_forward, init_bank
from napari_miner.core.model import LevelParams, PyramidModel, empty_levels
from napari_miner.core.pyramid import reconstruct


def _random_bank(bank: LevelParams, fraction: float, generator: torch.Generator) -> LevelParams:
    """``bank`` with random SIREN MLPs on a random ``fraction`` of its blocks."""
    n_blocks = bank.grid.n_blocks
    keep = torch.rand(n_blocks, generator=generator) < fraction
    ids = torch.nonzero(keep).reshape(-1)
    sizes = [tuple(w.shape[1:]) for w in bank.weights]
    width, hidden = sizes[0][0], len(sizes) - 2
    weights, biases = init_bank(len(ids), sizes[0][1], width, hidden, sizes[-1][0], 30.0, generator)
    return LevelParams(bank.grid, ids, weights, biases)


def random_model(shape: tuple[int, ...], n_channels: int, seed: int = 0) -> PyramidModel:
    """A model of ``shape`` with random MLPs in every bank (main, lite and split)."""
    config = MinerConfig(n_levels=3, block_size=8 if len(shape) == 3 else 16)
    generator = torch.Generator().manual_seed(seed)
    levels = []
    for level in empty_levels(shape, config, n_channels):
        main = _random_bank(level, 0.7, generator)
        main.extra = tuple(_random_bank(bank, 0.3, generator) for bank in level.extra)
        levels.append(main)
    rgb = n_channels == 3 and len(shape) == 2
    full_shape = (*shape, n_channels) if n_channels > 1 else shape
    layout = InputLayout(full_shape, "|u1", 2 if n_channels > 1 else None, rgb, 0.0, 255.0)
    return PyramidModel(layout, config, levels)


def reference_estimate(model: PyramidModel, level: int) -> torch.Tensor:
    """Every bank evaluated on its whole grid and the Laplacian pyramid summed: no tiles, no cache."""
    ndim = len(model.layout.spatial_shape)
    residuals = []
    for main in model.levels:
        total = torch.zeros((model.layout.n_channels, *main.grid.shape))
        for bank in (main, *main.extra):
            values = torch.zeros(
                (bank.grid.n_blocks, model.layout.n_channels, bank.grid.block_pixels)
            )
            coords = local_coordinates(bank.grid.block_size, ndim)
            values[bank.block_ids] = bank_forward(bank.weights, bank.biases, coords)
            total += bank.grid.fold(values)
        residuals.append(total)
    return reconstruct(residuals[level:])


@pytest.mark.parametrize(("ndim", "block"), [(2, 32), (2, 16), (3, 8)])
def test_bank_decode_equals_the_plain_forward_pass(ndim: int, block: int) -> None:
    generator = torch.Generator().manual_seed(1)
    weights, biases = init_bank(37, ndim, 18, 2, 3, 30.0, generator)
    expected = bank_forward(weights, biases, local_coordinates(block, ndim))
    assert torch.allclose(bank_decode(weights, biases, block, ndim), expected, atol=2e-6)
    assert torch.allclose(bank_decode(weights, biases, block, ndim, chunk=5), expected, atol=2e-6)


@pytest.mark.parametrize(
    ("shape", "channels"), [((300, 517), 3), ((283, 250), 1), ((40, 37, 45), 1)]
)
def test_every_level_decodes_to_the_reference(shape: tuple[int, ...], channels: int) -> None:
    model = random_model(shape, channels)
    cache = EstimateCache()
    for level in range(model.n_levels):
        expected = reference_estimate(model, level)
        bounds = [(0, s) for s in model.level_shape(level)]
        got = TiledDecoder(model, torch.device("cpu"), cache).estimate(level, bounds)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5)
        decoded = model.decode(level)
        assert decoded.shape == model.decoded_shape(level)
        assert (
            np.abs(decoded.astype(int) - model.layout.denormalize(expected).astype(int)).max() <= 1
        )


def test_a_region_is_the_crop_of_the_whole_level() -> None:
    model = random_model((700, 600), 3)
    full = model.decode(0)
    for region in [(slice(13, 517), slice(250, 600)), (slice(255, 257), slice(0, 1))]:
        assert np.array_equal(model.decode(0, region=region), full[region])
    normalized = model.decode_normalized(1, region=(slice(100, 300), slice(7, 9)))
    assert normalized.shape == (3, 200, 2)


def test_split_bounds_follow_the_tile_grid() -> None:
    pieces = list(split_bounds([(10, 600), (0, 256)], 256))
    assert pieces == [[(10, 256), (0, 256)], [(256, 512), (0, 256)], [(512, 600), (0, 256)]]
    assert tile_side(32, 2) == 256 and tile_side(32, 3) == 64 and tile_side(24, 2) == 240
    assert tile_side(32, 2, "cuda") == 2048 and tile_side(32, 3, "cuda") == 256


def test_neighbouring_regions_share_their_coarser_tiles() -> None:
    model = random_model((1024, 1024), 1)
    cache = EstimateCache()
    decoder = TiledDecoder(model, torch.device("cpu"), cache)
    side = decoder.side
    for y in range(0, 1024, side):
        for x in range(0, 1024, side):
            decoder.estimate(0, [(y, y + side), (x, x + side)])
    # level 1 (512²) and level 2 (256²) are computed once per tile, however many chunks need them
    assert cache.misses == (512 // side) ** 2 + 1
    assert cache.hits > cache.misses


def test_the_cache_keeps_to_its_budget() -> None:
    cache = EstimateCache(max_bytes=3 * 4 * 100)
    for key in range(10):
        cache.get(key, lambda: torch.zeros(100))
    assert len(cache) == 3 and cache.nbytes == 3 * 4 * 100
    cache.get(9, lambda: pytest.fail("recomputed a cached tile"))
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_threads_asking_for_one_tile_compute_it_once() -> None:
    cache = EstimateCache()
    calls = []
    started = threading.Event()

    def slow() -> torch.Tensor:
        calls.append(1)
        started.wait(1.0)
        return torch.ones(4)

    threads = [threading.Thread(target=cache.get, args=("k", slow)) for _ in range(4)]
    for t in threads:
        t.start()
    started.set()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.misses == 1 and cache.hits == 3


def test_a_failed_computation_leaves_the_key_free() -> None:
    cache = EstimateCache()

    def broken() -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get("k", broken)
    assert torch.equal(cache.get("k", lambda: torch.ones(2)), torch.ones(2))


def test_a_changed_model_never_decodes_stale_tiles() -> None:
    model = random_model((512, 512), 1, seed=3)
    before = model.decode(0)
    with torch.no_grad():
        model.levels[1].weights[-1].mul_(-1.0)  # change the coarser level in place
    after = model.decode(0)
    expected = model.layout.denormalize(reference_estimate(model, 0))
    assert not np.array_equal(before, after)
    assert np.abs(after.astype(int) - expected.astype(int)).max() <= 1


def test_a_region_computes_only_the_coarser_blocks_it_needs() -> None:
    model = random_model((1024, 1024), 1)
    cache = EstimateCache()
    decoder = TiledDecoder(model, torch.device("cpu"), cache)
    got = decoder.estimate(0, [(512, 544), (512, 544)])  # one block, next to tile corners
    tiles = list(cache._tiles.values())
    level1 = [t for key, t in cache._tiles.items() if key[3] == 1]
    assert level1 and all(0 < t.valid.sum() < t.valid.size for t in level1)
    # level 1 pixels 255..272 (the block and its one-pixel halo): 16-pixel blocks 15..17 per axis
    assert sum(t.valid.sum() for t in level1) == 9
    expected = reference_estimate(model, 0)[:, 512:544, 512:544]
    assert torch.allclose(got, expected, atol=1e-5) and tiles
