"""The per-level training unit: pruning threshold, retirement, stopping reasons, divergence."""

import numpy as np
import pytest
import torch

from napari_miner.core import training
from napari_miner.core.blocks import local_coordinates
from napari_miner.core.config import MinerConfig
from napari_miner.core.errors import ConfigError, TrainingError
from napari_miner.core.events import Progress
from napari_miner.core.training import (
    LevelTraining,
    prune_threshold,
    residual_energies,
    tile_seed,
)


def _mixed_image(seed=0):
    """Left half smooth (easy), right half noise (hard), 64x64, as a (1, 64, 64) tensor."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 64
    image = 0.5 + 0.3 * np.sin(2 * np.pi * y) * np.cos(np.pi * x)
    image[:, 32:] = rng.random((64, 32))
    return torch.from_numpy(image.astype(np.float32))[None]


def _training(target, threshold=-np.inf, level=0, **settings):
    config = MinerConfig(**{"block_size": 8, **settings})
    coords = local_coordinates(config.block_size, target.ndim - 1)
    generator = torch.Generator().manual_seed(tile_seed(config.seed, level, (0, 0)))
    base = torch.zeros_like(target)
    return LevelTraining(level, target, base, config, generator, coords, 16, lambda: 0.0, threshold)


def test_retired_blocks_are_frozen_bit_for_bit():
    unit = _training(
        _mixed_image(), n_levels=1, coarsest_width_factor=1, max_steps=200, check_every=5,
        plateau_rel_tol=0.0, final_plateau_rel_tol=0.0, target_psnr=60.0, block_target_mse=1e-4,
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
    target = _mixed_image()
    unit = _training(target, n_levels=1, max_steps=300, target_psnr=15.0)
    list(unit.run())
    assert unit.ended == "target" and unit.steps < 300
    unit = _training(target, n_levels=1, max_steps=10, target_psnr=90.0)
    list(unit.run())
    assert unit.ended == "max_steps" and unit.steps == 10
    tiny = dict(hidden_width=2, coarsest_width_factor=1, hidden_layers=0)  # cannot learn noise
    unit = _training(target, n_levels=1, max_steps=500, target_psnr=90.0, **tiny)
    list(unit.run())
    assert unit.ended == "plateau" and unit.steps < 500
    unit = _training(target, threshold=np.inf, n_levels=1)
    assert list(unit.run()) == [] and unit.ended == "pruned" and unit.n_active == 0


def test_progress_events_and_result():
    target = _mixed_image()
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
    real = training.bank_sse_and_grads

    def poisoned(*args, **kwargs):
        sse, grad_w, grad_b = real(*args, **kwargs)
        return sse, [g * float("nan") for g in grad_w], grad_b

    monkeypatch.setattr(training, "bank_sse_and_grads", poisoned)
    unit = _training(_mixed_image(), n_levels=1, coarsest_width_factor=1, max_steps=30)
    with pytest.raises(TrainingError, match="diverged at level 0"):
        list(unit.run())


def test_a_learning_rate_that_cannot_work_is_refused_before_training():
    with pytest.raises(ConfigError, match="learning_rate"):
        _training(_mixed_image(), learning_rate=1e6)


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
