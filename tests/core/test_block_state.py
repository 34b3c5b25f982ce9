"""Per-block states of a level's training: pruned, waiting, training, retired, trained, grown."""

import numpy as np
import pytest
import torch
from miner_test_data import mixed_image

import napari_miner as nm
from napari_miner.core.block_state import STATE_DESCRIPTIONS, BlockReport, BlockState
from napari_miner.core.blocks import BlockGrid, local_coordinates
from napari_miner.core.config import MinerConfig
from napari_miner.core.events import Progress, ScaleStarted
from napari_miner.core.model import pooled_mask
from napari_miner.core.training import LevelTraining, residual_energies, tile_seed

S = BlockState


def _training(target, threshold=-np.inf, **settings):
    defaults = {"block_size": 8, "weight_bits": None, "max_splits": 0, "lite_width": None}
    config = MinerConfig(**{**defaults, **settings})
    coords = local_coordinates(config.block_size, 2)
    generator = torch.Generator().manual_seed(tile_seed(config.seed, 0, (0, 0)))
    base = torch.zeros_like(target)
    return LevelTraining(0, target, base, config, generator, coords, 16, lambda: 0.0, threshold)


def _parameters(level) -> int:
    """Every weight and bias of a level's banks."""
    banks = (level, *level.extra)
    return sum(int(t.numel()) for bank in banks for t in (*bank.weights, *bank.biases))


# ------------------------------------------------------------------------------ the report
def test_a_report_pastes_settles_counts_and_describes():
    whole = BlockReport.empty((3, 4))
    assert whole.shape == (3, 4) and whole.counts()[S.UNKNOWN] == 12
    assert np.isnan(whole.loss).all()
    part = BlockReport(
        np.full((2, 2), S.TRAINING, np.uint8), np.full((2, 2), 1e-4, np.float32),
        np.full((2, 2), 321, np.int32),
    ).at((1, 2))  # fmt: skip
    assert part.region() == (slice(1, 3), slice(2, 4))
    whole.paste(part)
    assert whole.counts()[S.TRAINING] == 4 and whole.n_params[1:, 2:].sum() == 4 * 321
    assert whole.state[0, 0] == S.UNKNOWN  # the rest is left alone
    copy = whole.copy()
    copy.state[:] = S.GROWN
    assert whole.state[0, 0] == S.UNKNOWN  # a copy has arrays of its own
    text = whole.describe((1, 2))
    assert text == "block (1, 2) · training · 321 parameters · loss (MSE) 0.0001 = 40.0 dB"
    assert whole.describe((0, 0)).endswith("· unknown · 0 parameters · loss –")
    mlps = np.zeros((3, 4), bool)
    mlps[:, 0] = True
    mlps[1, 2] = True
    whole.settle(mlps)  # the level ended: nothing unknown, waiting or training any more
    assert whole.state[1, 2] == S.TRAINED and whole.state[2, 3] == S.PRUNED
    assert (whole.state[:, 0] == S.TRAINED).all()
    assert not np.isin(whole.state, [S.UNKNOWN, S.WAITING, S.TRAINING]).any()
    assert set(STATE_DESCRIPTIONS) == set(BlockState)


# ---------------------------------------------------------------------- a level's training
def test_states_follow_pruning_training_and_retirement():
    target = mixed_image()
    energy, _ = residual_energies(target, torch.zeros_like(target), 8)
    threshold = float(energy.flatten().sort().values[10])  # the 11 lowest energies are pruned
    unit = _training(
        target, threshold, n_levels=1, coarsest_width_factor=1, max_steps=25, check_every=5,
        progress_every=5, plateau_rel_tol=0.0, final_plateau_rel_tol=0.0, target_psnr=60.0,
        block_target_mse=1e-4,
    )  # fmt: skip
    pruned = (energy <= threshold).numpy()
    start = unit.block_report()
    assert (start.state[pruned] == S.PRUNED).all() and (start.state[~pruned] == S.WAITING).all()
    assert (start.n_params[pruned] == 0).all() and (start.n_params[~pruned] > 0).all()
    retired_seen = np.zeros_like(pruned)
    events = list(unit.run())
    for event in events:
        report = event.blocks
        assert report.shape == (8, 8)
        # training = the blocks still optimised; pruned blocks stay pruned
        np.testing.assert_array_equal(report.state == S.TRAINING, event.active_mask)
        assert (report.state[pruned] == S.PRUNED).all()
        retired = report.state == S.RETIRED
        assert (report.loss[retired] < unit.config.retire_mse).all()  # converged when retired
        assert not (retired_seen & ~retired).any()  # once retired, always retired
        retired_seen |= retired
    assert retired_seen.any(), "the smooth half retires"
    final = unit.block_report()
    assert set(np.unique(final.state)) <= {S.PRUNED, S.RETIRED, S.TRAINED}
    assert (final.state[retired_seen] == S.RETIRED).all()  # (more may retire at the last check)
    # the bank ends at a check: retired blocks are below retire_mse there, trained ones are not
    assert (final.loss[final.state == S.RETIRED] < unit.config.retire_mse).all()
    assert (final.loss[final.state == S.TRAINED] >= unit.config.retire_mse).all()
    assert (final.state == S.TRAINED).any()
    np.testing.assert_array_equal(final.state != S.PRUNED, unit.level.active_mask())
    assert int(final.n_params.sum()) == _parameters(unit.level)
    np.testing.assert_allclose(final.loss.ravel(), unit._block_mse.numpy())


def test_blocks_whose_mlps_level_0_can_spare_are_pruned():
    unit = _training(mixed_image(), n_levels=1, target_psnr=28.0, max_steps=200)
    list(unit.run())
    final = unit.block_report()
    kept = unit.level.active_mask()
    assert not kept.all()  # some MLPs were dropped after training
    np.testing.assert_array_equal(final.state == S.PRUNED, ~kept)
    assert (final.n_params[~kept] == 0).all()
    assert int(final.n_params.sum()) == _parameters(unit.level)


def test_grown_blocks_are_the_parents_of_split_children():
    target = torch.from_numpy(np.random.default_rng(3).random((1, 64, 64), dtype=np.float32))
    tiny = dict(hidden_width=4, coarsest_width_factor=1, hidden_layers=1, max_steps=200)
    unit = _training(target, n_levels=1, target_psnr=45.0, max_splits=1, split_width=8, **tiny)
    events = list(unit.run())
    split = unit.level.extra[0]
    assert split.n_mlps > 0
    final = unit.block_report()
    parents = pooled_mask(split, unit.level.grid)
    np.testing.assert_array_equal(final.state == S.GROWN, parents)
    assert int(final.n_params.sum()) == _parameters(unit.level)  # children's MLPs included
    growing = [e for e in events if (e.blocks.state == S.GROWN).any()]
    assert growing, "progress while the children train shows their parents as grown"
    # while the children train, a grown block's error is its parent's share of the level's error
    last = growing[-1].blocks
    level_mse = float((last.loss.astype(np.float64)).mean())
    assert level_mse == pytest.approx(growing[-1].loss, rel=1e-3)


def test_a_fit_reports_every_block_of_every_level():
    from skimage import data

    image = data.camera()[::8, ::8].copy()  # 64x64
    config = nm.MinerConfig(n_levels=2, block_size=8, max_steps=20)
    run = nm.fit_iter(image, config, device="cpu")
    events = list(run)
    starts = {e.level: e.blocks for e in events if isinstance(e, ScaleStarted)}
    progress = [e for e in events if isinstance(e, Progress)]
    assert all(e.blocks is not None for e in progress)
    for j, level in enumerate(run.model.levels):
        final = run.progress.blocks[j]
        assert final.shape == BlockGrid(run.model.level_shape(j), 8).grid_shape
        # pruned before training -> still pruned; no MLP -> pruned; no block left in between
        assert (final.state[starts[j].state == S.PRUNED] == S.PRUNED).all()
        np.testing.assert_array_equal(final.state == S.PRUNED, ~level.active_mask())
        assert set(np.unique(final.state)) <= {S.PRUNED, S.RETIRED, S.TRAINED, S.GROWN}
        assert int(final.n_params.sum()) == _parameters(level)
        assert np.isfinite(final.loss).all()
