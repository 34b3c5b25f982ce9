import numpy as np
import pytest
import torch

from napari_miner.core.config import MinerConfig
from napari_miner.core.errors import ConfigError
from napari_miner.core.events import Finished, Progress, ScaleFinished, ScaleStarted
from napari_miner.core.layout import inspect_input
from napari_miner.core.mlp_bank import count_parameters, layer_sizes
from napari_miner.core.trainer import MinerTrainer


def _trainer(image, **settings):
    layout = inspect_input(image)
    config = MinerConfig(**settings)
    return MinerTrainer(layout.normalize(image), layout, config, torch.device("cpu"))


def _mixed_image(seed=0):
    """Left half smooth (easy), right half noise (hard), 64x64."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 64
    image = 0.5 + 0.3 * np.sin(2 * np.pi * y) * np.cos(np.pi * x)
    image[:, 32:] = rng.random((64, 32))
    return image.astype(np.float32)


def test_events_come_coarse_to_fine_and_end_with_the_model():
    trainer = _trainer(_mixed_image(), n_levels=3, block_size=8, max_steps=30, progress_every=10)
    events = list(trainer.run())
    started = [e.level for e in events if isinstance(e, ScaleStarted)]
    finished = [e.level for e in events if isinstance(e, ScaleFinished)]
    assert started == finished == [2, 1, 0]
    assert isinstance(events[-1], Finished)
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress and all(e.step % 10 == 0 for e in progress)
    assert all(int(e.active_mask.sum()) == e.n_active for e in progress)
    assert {e.active_mask.shape for e in progress if e.level == 0} == {(8, 8)}
    elapsed = [e.elapsed_s for e in events if hasattr(e, "elapsed_s")]
    assert elapsed == sorted(elapsed)
    with pytest.raises(AttributeError):
        progress[0].step = 3  # events are immutable


def test_low_energy_blocks_get_no_mlp_and_no_parameters():
    image = np.zeros((64, 64), np.float32)
    image[:16, :16] = np.random.default_rng(0).random((16, 16))  # detail in one corner only
    trainer = _trainer(image, n_levels=2, block_size=8, max_steps=20)
    *_, done = trainer.run()
    level0 = done.model.levels[0]
    assert level0.grid.n_blocks == 64
    assert 0 < level0.n_mlps <= 16  # only blocks touching the detailed corner
    rows, cols = np.nonzero(level0.active_mask())
    assert rows.max() < 3 and cols.max() < 3
    config = done.model.config
    expected = sum(
        lv.n_mlps
        * sum(o * i + o for o, i in layer_sizes(2, config.width_at(j), config.hidden_layers, 1))
        for j, lv in enumerate(done.model.levels)
    )
    assert done.model.n_parameters == expected
    assert expected == sum(count_parameters(lv.weights, lv.biases) for lv in done.model.levels)


def test_retired_blocks_are_frozen_bit_for_bit():
    trainer = _trainer(
        _mixed_image(),
        n_levels=1,
        block_size=8,
        coarsest_width_factor=1,
        max_steps=200,
        check_every=5,
        plateau_rel_tol=0.0,
        target_psnr=60.0,
        block_target_mse=1e-4,
    )
    snapshot = None
    retired = None
    for event in trainer.run():
        current = trainer.training_rows
        if snapshot is None and current is not None:
            level, rows = current
            n_mlps = trainer.levels[level].n_mlps
            if rows.numel() < n_mlps:  # some blocks retired
                retired = sorted(set(range(n_mlps)) - set(rows.tolist()))
                snapshot = [w[retired].clone() for w in trainer.levels[level].weights]
        if isinstance(event, Finished):
            final = event
    assert retired, "the smooth half should retire early"
    assert final.model.levels[0].stats["steps"] > 5  # training went on after they retired
    for before, after in zip(snapshot, final.model.levels[0].weights, strict=True):
        assert torch.equal(before, after[retired])


def test_target_psnr_stops_early():
    image = _mixed_image()
    trainer = _trainer(image, n_levels=2, block_size=8, max_steps=300, target_psnr=25.0)
    *_, done = trainer.run()
    assert done.reason == "target"
    assert done.psnr >= 25.0


def test_partial_model_mid_level_is_valid():
    trainer = _trainer(_mixed_image(), n_levels=2, block_size=8, max_steps=100, progress_every=5)
    for event in trainer.run():
        if isinstance(event, Progress) and event.level == 0:
            break
    model = trainer.model()
    assert model.decode(0).shape == (64, 64)
    assert model.levels[0].n_mlps > 0


def test_shape_that_cannot_work_is_rejected():
    with pytest.raises(ConfigError, match="n_levels"):
        _trainer(np.zeros((16, 40), np.float32), n_levels=5, block_size=4)
    with pytest.raises(ConfigError, match="block_size"):
        _trainer(np.zeros((16, 20), np.float32), n_levels=2, block_size=32)


def test_divergence_is_reported_not_silently_stored(monkeypatch):
    from napari_miner.core import trainer as trainer_module
    from napari_miner.core.errors import TrainingError

    real = trainer_module.bank_sse_and_grads

    def poisoned(*args, **kwargs):
        sse, grad_w, grad_b = real(*args, **kwargs)
        return sse, [g * float("nan") for g in grad_w], grad_b

    monkeypatch.setattr(trainer_module, "bank_sse_and_grads", poisoned)
    trainer = _trainer(
        _mixed_image(), n_levels=1, block_size=8, coarsest_width_factor=1, max_steps=30
    )
    with pytest.raises(TrainingError, match="diverged at level 0"):
        list(trainer.run())
