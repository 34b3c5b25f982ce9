"""The one fit engine through the public API: events, pruning, stopping, partial models."""

from pathlib import Path

import numpy as np
import pytest
import torch

import napari_miner as nm
from napari_miner.core.errors import ConfigError
from napari_miner.core.events import Finished, Progress, ScaleFinished, ScaleStarted, TileFinished
from napari_miner.core.mlp_bank import count_parameters, layer_sizes

LEGACY = Path(__file__).parents[1] / "data" / "legacy"


def _mixed_image(seed=0):
    """Left half smooth (easy), right half noise (hard), 64x64."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 64
    image = 0.5 + 0.3 * np.sin(2 * np.pi * y) * np.cos(np.pi * x)
    image[:, 32:] = rng.random((64, 32))
    return image.astype(np.float32)


def _run(image, **settings):
    return nm.fit_iter(image, nm.MinerConfig(**settings), device="cpu")


def test_events_come_coarse_to_fine_and_end_with_the_model():
    run = _run(_mixed_image(), n_levels=3, block_size=8, max_steps=30, progress_every=10)
    events = list(run)
    started = [e.level for e in events if isinstance(e, ScaleStarted)]
    finished = [e.level for e in events if isinstance(e, ScaleFinished)]
    assert started == finished == [2, 1, 0]
    assert [e.level for e in events if isinstance(e, TileFinished)] == [2, 1, 0]  # one tile each
    assert isinstance(events[-1], Finished) and isinstance(events[-1].model, nm.MinerModel)
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress and all(e.step % 10 == 0 for e in progress)
    assert all(int(e.active_mask.sum()) == e.n_active and e.tile == (0, 1) for e in progress)
    assert {e.active_mask.shape for e in progress if e.level == 0} == {(8, 8)}
    elapsed = [e.elapsed_s for e in events if hasattr(e, "elapsed_s")]
    assert elapsed == sorted(elapsed)
    reconstruction = [e for e in events if isinstance(e, ScaleFinished)][-1].reconstruction
    np.testing.assert_allclose(
        reconstruction[..., 0], run.model.decode_normalized(0)[0].numpy(), atol=1e-5
    )
    with pytest.raises(AttributeError):
        progress[0].step = 3  # events are immutable


def test_low_energy_blocks_get_no_mlp_and_no_parameters():
    image = np.zeros((64, 64), np.float32)
    image[:16, :16] = np.random.default_rng(0).random((16, 16))  # detail in one corner only
    model = nm.fit(image, nm.MinerConfig(n_levels=2, block_size=8, max_steps=20), device="cpu")
    level0 = model.levels[0]
    assert level0.grid.n_blocks == 64
    assert 0 < level0.n_mlps <= 16  # only blocks touching the detailed corner
    rows, cols = np.nonzero(level0.active_mask())
    assert rows.max() < 3 and cols.max() < 3
    config = model.config
    expected = sum(
        lv.n_mlps
        * sum(o * i + o for o, i in layer_sizes(2, config.width_at(j), config.hidden_layers, 1))
        for j, lv in enumerate(model.levels)
    )
    assert model.n_parameters == expected
    assert expected == sum(count_parameters(lv.weights, lv.biases) for lv in model.levels)


def test_target_psnr_stops_early_and_says_so():
    run = _run(_mixed_image(), n_levels=2, block_size=8, max_steps=300, target_psnr=25.0)
    *_, done = run
    assert done.reason == "target" and done.psnr >= 25.0
    assert run.model.levels[0].stats["steps"] < 300
    run = _run(
        _mixed_image(), n_levels=2, block_size=8, max_steps=20, target_psnr=60.0, weight_bits=None
    )
    *_, done = run
    assert done.reason == "max_steps" and done.psnr < 60.0  # says that the target was missed


def test_partial_model_mid_level_is_valid():
    run = _run(_mixed_image(), n_levels=2, block_size=8, max_steps=100, progress_every=5)
    for event in run:
        if isinstance(event, Progress) and event.level == 0:
            break
    model = run.model
    assert model.decode(0).shape == (64, 64)
    assert model.levels[0].n_mlps > 0
    run.close()
    assert run.model.levels[0].n_mlps == model.levels[0].n_mlps  # kept when closed mid-level


def test_shape_that_cannot_work_is_rejected():
    with pytest.raises(ConfigError, match="n_levels"):
        _run(np.zeros((16, 40), np.float32), n_levels=5, block_size=4)
    with pytest.raises(ConfigError, match="block_size"):
        _run(np.zeros((16, 20), np.float32), n_levels=2, block_size=32)


def test_the_engine_fits_what_the_released_trainer_fitted():
    """An in-memory fit (one tile per level) gives the model that napari-miner 0.1's separate
    in-memory trainer gave for the same input and seed (stored in format 1 by that release).

    On the machine that wrote the reference the two are bit-for-bit equal. Other CPUs round
    matrix products differently, and as every finer level learns the residual of the coarser
    estimate, the differences grow level by level (on an H200 host's CPU: the coarsest level's
    weights within 6e-4, level 0's up to 3.9 apart, 0.15 dB): the same blocks and steps at every
    level, the coarsest level's weights and the PSNR are what any machine must reproduce.
    """
    reference = nm.load(LEGACY / "format1_rgb.miner.zarr")
    image = np.load(LEGACY / "format1_rgb_input.npy")
    model = nm.fit(image, reference.config, device="cpu")
    for level, expected in zip(model.levels, reference.levels, strict=True):
        assert torch.equal(level.block_ids, expected.block_ids)
        assert level.stats["steps"] == expected.stats["steps"]
    coarsest, expected = model.levels[-1], reference.levels[-1]
    for new, old in zip(
        coarsest.weights + coarsest.biases, expected.weights + expected.biases, strict=True
    ):
        torch.testing.assert_close(new, old, rtol=1e-3, atol=2e-3)
    assert abs(nm.core.metrics.psnr(image, model.decode(), 255) - 39.7675) < 0.3


def test_watching_a_fit_does_not_change_the_model():
    """Reading ``run.model`` while training (as the widget's live layers do) leaves the fit as it is."""
    from skimage import data

    image = data.camera()[:128, :128]
    config = nm.MinerConfig(
        n_levels=2, block_size=16, max_steps=60, progress_every=5, target_psnr=45
    )

    def fit(watch: bool):
        run = nm.fit_iter(image, config, device="cpu")
        watched = 0
        for event in run:
            if watch and isinstance(event, Progress):
                run.model.decode(0)
                watched += 1
        return event.model, watched

    unwatched, _ = fit(False)
    watched, n = fit(True)
    assert n > 10 and any(level.extra for level in unwatched.levels)  # lite or split banks too
    for a, b in zip(unwatched.levels, watched.levels, strict=True):
        for x, y in zip((a, *a.extra), (b, *b.extra), strict=True):
            assert torch.equal(x.block_ids, y.block_ids)
            for p, q in zip(x.weights + x.biases, y.weights + y.biases, strict=True):
                assert torch.equal(p, q)
