"""The per-level training unit: pruning threshold, retirement, stopping reasons, divergence."""

import numpy as np
import pytest
import torch
from miner_test_data import mixed_image

from napari_miner.core import bank_fit
from napari_miner.core.blocks import local_coordinates
from napari_miner.core.capacity import TRIM_MARGIN_DB
from napari_miner.core.config import MinerConfig
from napari_miner.core.errors import ConfigError, TrainingError
from napari_miner.core.events import Progress
from napari_miner.core.training import (
    LevelTraining,
    prune_threshold,
    residual_energies,
    tile_seed,
)


def _training(target, threshold=-np.inf, level=0, **settings):
    defaults = {"block_size": 8, "weight_bits": None, "max_splits": 0, "lite_width": None}
    config = MinerConfig(**{**defaults, **settings})
    coords = local_coordinates(config.block_size, target.ndim - 1)
    generator = torch.Generator().manual_seed(tile_seed(config.seed, level, (0, 0)))
    base = torch.zeros_like(target)
    return LevelTraining(level, target, base, config, generator, coords, 16, lambda: 0.0, threshold)


def test_retired_blocks_are_frozen_bit_for_bit():
    unit = _training(
        mixed_image(), n_levels=1, coarsest_width_factor=1, max_steps=200, check_every=5,
        plateau_rel_tol=0.0, final_plateau_rel_tol=0.0, target_psnr=60.0, block_target_mse=1e-4, weight_bits=None,
    )  # fmt: skip
    retired, snapshot = None, None
    for _ in unit.run():
        if retired is None and unit.rows.numel() < unit.n_active:  # some blocks retired
            retired = sorted(set(range(unit.n_active)) - set(unit.rows.tolist()))
            snapshot = [w[retired].clone() for w in unit.level.weights]
    assert retired, "the smooth half should retire early"
    assert unit.steps > 5  # training went on after they retired
    for before, after in zip(snapshot, unit.level.weights, strict=True):
        assert torch.equal(before, after[retired])


def test_stopping_reasons():
    target = mixed_image()
    unit = _training(target, n_levels=1, max_steps=300, target_psnr=15.0)
    list(unit.run())
    assert unit.ended == "target" and unit.steps < 300
    unit = _training(target, n_levels=1, max_steps=10, target_psnr=90.0, weight_bits=None)
    list(unit.run())
    assert unit.ended == "max_steps" and unit.steps == 10
    tiny = dict(hidden_width=2, coarsest_width_factor=1, hidden_layers=0)  # cannot learn noise
    unit = _training(target, n_levels=1, max_steps=500, target_psnr=90.0, weight_bits=None, **tiny)
    list(unit.run())
    assert unit.ended == "plateau" and unit.steps < 500
    unit = _training(target, threshold=np.inf, n_levels=1)
    assert list(unit.run()) == [] and unit.ended == "pruned" and unit.n_active == 0


def test_progress_events_and_result():
    target = mixed_image()
    unit = _training(target, n_levels=1, max_steps=20, progress_every=5)
    events = list(unit.run())
    assert [e.step for e in events] == [5, 10, 15, 20]
    assert all(isinstance(e, Progress) and e.active_mask.shape == (8, 8) for e in events)
    assert all(int(e.active_mask.sum()) == e.n_active for e in events)
    result = unit.result()
    assert result.steps == 20 and result.estimate.shape == target.shape
    sse = float(((result.estimate - target) ** 2).mean())
    # progress reports the last step's own errors (before its update): close to the result's
    assert 10 * np.log10(1 / sse) == pytest.approx(events[-1].psnr, abs=1.5)


def test_divergence_is_reported_not_silently_stored(monkeypatch):
    real = bank_fit.bank_sse_and_grads

    def poisoned(*args, **kwargs):
        sse, grad_w, grad_b = real(*args, **kwargs)
        return sse, [g * float("nan") for g in grad_w], grad_b

    monkeypatch.setattr(bank_fit, "bank_sse_and_grads", poisoned)
    unit = _training(mixed_image(), n_levels=1, coarsest_width_factor=1, max_steps=30)
    with pytest.raises(TrainingError, match="diverged at level 0"):
        list(unit.run())


def test_a_learning_rate_that_cannot_work_is_refused_before_training():
    with pytest.raises(ConfigError, match="learning_rate"):
        _training(mixed_image(), learning_rate=1e6)


# ---------------------------------------------------------------------------------- pruning
def _energies(values):
    energy = torch.tensor(values, dtype=torch.float32)
    return energy, torch.full_like(energy, 64.0)


def test_prune_threshold_spends_the_budget_on_the_lowest_energies():
    config = MinerConfig(target_psnr=20.0, prune_budget=0.5)  # allowance 0.005 per value
    energy, counts = _energies([0.0, 0.001, 0.002, 0.003, 0.5, 0.9])
    threshold = prune_threshold(energy, counts, config)
    trained = energy > threshold
    # 0 + 0.001 + 0.002 = 0.003 of the 6 blocks' allowance 0.005 * 6 ... pruned blocks cost <= it
    assert (energy[~trained] * counts[~trained]).sum() <= 0.005 * counts.sum()
    assert trained.tolist() == [False, False, False, False, True, True]


def test_tied_energies_are_pruned_or_trained_together():
    config = MinerConfig(target_psnr=20.0, prune_budget=0.5)
    energy, counts = _energies([0.004, 0.004, 0.004, 0.004, 0.004, 0.9])
    threshold = prune_threshold(energy, counts, config)
    trained = (energy > threshold).tolist()
    assert trained[:5] == [trained[0]] * 5  # never some of the equal blocks only


def test_prune_mse_overrides_the_budget():
    config = MinerConfig(prune_mse=0.01)
    energy, counts = _energies([0.0, 0.02, 0.005])
    assert prune_threshold(energy, counts, config) == 0.01


def test_residual_energies_are_per_block():
    target = torch.zeros((2, 20, 16))
    target[:, :8, :8] = 1.0
    energy, counts = residual_energies(target, torch.zeros_like(target), 8)
    assert energy.shape == (3, 2) and counts.shape == (3, 2)
    assert float(energy[0, 0]) == 1.0 and float(energy[1, 1]) == 0.0
    assert counts[2, 0] == 2 * 4 * 8  # an edge block counts its real pixels only


def test_tile_seeds_depend_on_the_tile():
    assert tile_seed(0, 0, (0, 0)) != tile_seed(0, 0, (0, 1)) != tile_seed(0, 1, (0, 0))
    assert tile_seed(3, 2, (1, 2)) == tile_seed(3, 2, (1, 2))


# ------------------------------------------------------------------------------------ growth
def _noise(seed=3, shape=(64, 64)):
    return torch.from_numpy(np.random.default_rng(seed).random(shape, dtype=np.float32))[None]


TINY = dict(hidden_width=4, coarsest_width_factor=1, hidden_layers=1, max_steps=200)
"""MLPs too small for noise: the main bank plateaus far below the target."""


def test_a_plateau_below_the_target_grows_capacity_where_the_error_is():
    target = _noise()
    flat = _training(target, n_levels=1, target_psnr=45.0, **TINY)
    list(flat.run())
    grown = _training(target, n_levels=1, target_psnr=45.0, max_splits=1, split_width=8, **TINY)
    events = list(grown.run())
    split = grown.level.extra[0]
    assert flat.ended in ("plateau", "max_steps") and flat.level.extra == ()
    assert _psnr(flat, target) < 25  # the main bank is far from the target
    assert split.grid.block_size == 4 and split.n_mlps > 0  # 2x2 children of 4x4 pixels
    assert grown.level.stats["n_split1"] == split.n_mlps
    assert grown.steps > flat.steps and events[-1].step <= grown.steps
    assert all(e.active_mask.shape == (8, 8) for e in events)
    assert grown.ended == "target" and _psnr(grown, target) >= 45.0


def test_a_target_out_of_reach_even_with_growth_says_so():
    target = _noise()
    tiny_split = dict(max_splits=1, split_width=2)  # children too small for noise as well
    grown = _training(target, n_levels=1, target_psnr=50.0, **TINY, **tiny_split)
    list(grown.run())
    assert grown.level.extra[0].n_mlps > 0
    assert grown.ended in ("plateau", "max_steps") and _psnr(grown, target) < 50.0


def _psnr(unit, target):
    return 10 * np.log10(1 / float(((unit.result().estimate - target) ** 2).mean()))


def test_only_blocks_above_their_share_of_the_error_are_split():
    target = torch.full((1, 64, 64), 0.5)
    target[:, :16, :16] = _noise(7, (16, 16))  # detail in one corner only
    grown = _training(target, n_levels=1, target_psnr=40.0, max_splits=1, **TINY)
    list(grown.run())
    split = grown.level.extra[0]
    rows, cols = np.nonzero(split.active_mask())
    assert split.n_mlps > 0 and rows.max() < 4 * 2 and cols.max() < 4 * 2  # children of the corner


def test_growth_only_at_level_0():
    target = _noise()
    unit = _training(target, level=1, n_levels=2, target_psnr=45.0, max_splits=1, **TINY)
    list(unit.run())
    assert unit.level.extra == ()


# ------------------------------------------------------------------------------ quantisation
def test_a_trained_bank_is_quantised_with_its_weights_on_the_grid():
    from napari_miner.core.quantize import encode_bank

    target = mixed_image()
    unit = _training(target, n_levels=1, max_steps=60, weight_bits=8, target_psnr=30.0)
    list(unit.run())
    level = unit.level
    assert level.bits == 8
    integers, _ = encode_bank(level.weights, level.biases, 8)  # raises if off the grid
    assert max(int(np.abs(k).max()) for k in integers[2:]) == 127
    assert unit.ended == "target" and _psnr(unit, target) >= 30.0  # measured on the quantised bank


def test_the_quantisation_aware_fine_tune_brings_the_cost_within_the_budget():
    from napari_miner.core.bank_fit import bank_mse, fine_tune_quantized
    from napari_miner.core.quantize import fake_quantize

    target = mixed_image()
    unit = _training(target, n_levels=1, max_steps=100, target_psnr=40.0)
    list(unit.run())
    bank, coords = unit.level, unit._coords
    blocks = unit._blocks[bank.block_ids]
    counts = blocks.shape[1] * blocks.shape[2]

    def cost_of(weights, biases):
        float_sse = bank_mse(bank.weights, bank.biases, coords, blocks, None)[0] * counts
        return lambda sse: 10 * np.log10(float(sse.sum()) / float(float_sse.sum()))

    cost = cost_of(bank.weights, bank.biases)
    qw, qb = fake_quantize(bank.weights, bank.biases, 7)
    before = cost(bank_mse(qw, qb, coords, blocks, None)[0] * counts)
    after = fine_tune_quantized(bank, blocks, None, coords, 7, cost, 0.1, 16)
    assert before > 0.1  # rounding to 7 bits alone costs more than the budget
    assert after < before and after <= 0.1
    assert bank.bits == 7


# ------------------------------------------------------------------- capacity sized to content
def test_blocks_with_a_small_residual_get_narrow_mlps():
    from napari_miner.core.mlp_bank import layer_sizes, params_per_mlp

    target = torch.zeros((1, 64, 64))
    y, x = np.mgrid[0:64, 0:32] / 64
    target[0, :, :32] = torch.from_numpy(0.01 * np.sin(6 * y) * np.cos(5 * x)).float()  # gentle
    target[0, :, 32:] = _noise(11, (64, 32))[0]  # textured
    # level 1 of 2 (coarsest: width 36), where no target trims MLPs away
    settings = dict(n_levels=2, target_psnr=35.0, max_steps=100, level=1)
    sized = _training(target, lite_width=4, lite_energy=64.0, **settings)
    list(sized.run())
    lite = sized.level.extra[0]
    assert lite.grid == sized.level.grid and lite.n_mlps > 0
    lite_cols = np.nonzero(lite.active_mask())[1]
    main_cols = np.nonzero(sized.level.grid.mask(sized.level.block_ids))[1]
    assert lite_cols.max() < 4 <= main_cols.min()  # the gentle half narrow, the texture wide
    assert sized.level.stats["n_mlps"] == lite.n_mlps + sized.level.block_ids.numel()
    lite_params = params_per_mlp(layer_sizes(2, 4, 2, 1))
    main_params = params_per_mlp(layer_sizes(2, 36, 2, 1))
    assert sized.level.n_parameters == (
        lite.n_mlps * lite_params + sized.level.block_ids.numel() * main_params
    )
    uniform = _training(target, **settings)
    list(uniform.run())
    assert sized.level.n_parameters < 0.8 * uniform.level.n_parameters
    assert _psnr(sized, target) >= 35.0 - 0.5


def test_mlps_that_the_target_can_spare_are_dropped_least_useful_first():
    target = mixed_image()
    settings = dict(n_levels=1, target_psnr=28.0, max_steps=200)
    unit = _training(target, **settings)
    list(unit.run())
    kept = unit.level.block_ids
    assert unit.ended == "target" and _psnr(unit, target) >= 28.0
    assert unit.level.stats["n_mlps"] == kept.numel() < unit.level.grid.n_blocks
    energy, mse = unit._energy, unit._block_mse  # per block (all 8x8): without, with its MLP
    slack = 10 ** (-(28.0 + TRIM_MARGIN_DB) / 10) - float(mse.mean())
    assert float((energy[kept] - mse[kept]).min()) > slack  # dropping any other would miss it
    dropped = torch.ones(unit.level.grid.n_blocks, dtype=torch.bool)
    dropped[kept] = False
    assert bool((mse[dropped] == energy[dropped]).all())  # a dropped block keeps its residual


def test_a_snapshot_leaves_out_banks_not_yet_trained():
    target = torch.zeros((1, 64, 64))
    y, x = np.mgrid[0:64, 0:32] / 64
    target[0, :, :32] = torch.from_numpy(0.01 * np.sin(6 * y) * np.cos(5 * x)).float()
    target[0, :, 32:] = _noise(11, (64, 32))[0]
    unit = _training(target, n_levels=2, target_psnr=35.0, max_steps=50, level=1, lite_width=4,
                     lite_energy=64.0, progress_every=5)  # fmt: skip
    run = unit.run()
    next(run)  # the main bank is training; the lite bank's MLPs are still random
    assert unit.level.extra[0].block_ids.numel() > 0
    live = unit.snapshot()
    assert live.extra[0].n_mlps == 0 and live.block_ids.numel() == unit.level.block_ids.numel()
    for _ in run:
        pass
    assert unit.snapshot().extra[0].n_mlps == unit.level.extra[0].n_mlps > 0
