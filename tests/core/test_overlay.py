"""The active-blocks overlay: finest level with an MLP under each level-0 block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_miner import MinerConfig, fit
from napari_miner.core.layout import inspect_input
from napari_miner.core.mlp_bank import init_bank
from napari_miner.core.model import PyramidModel, empty_levels
from napari_miner.core.overlay import active_block_labels


def _hand_built(shape, config, active: dict[int, list[tuple[int, ...]]]) -> PyramidModel:
    """A model whose level ``j`` has MLPs exactly on the blocks ``active[j]`` (grid coordinates)."""
    layout = inspect_input(np.zeros(shape, dtype=np.float32))
    levels = empty_levels(shape, config, n_channels=1)
    generator = torch.Generator().manual_seed(0)
    for j, blocks in active.items():
        grid = levels[j].grid
        ids = sorted(int(np.ravel_multi_index(b, grid.grid_shape)) for b in blocks)
        levels[j].block_ids = torch.tensor(ids, dtype=torch.long)
        levels[j].weights, levels[j].biases = init_bank(
            len(ids), len(shape), config.width_at(j), config.hidden_layers, 1, 30.0, generator
        )
    return PyramidModel(layout, config, levels)


def _brute_force(model) -> np.ndarray:
    """Independent reference: walk every level-0 cell and look up each level's covering block."""
    masks = [lv.active_mask() for lv in model.levels]
    labels = np.zeros(masks[0].shape, dtype=int)
    for cell in np.ndindex(*masks[0].shape):
        for j, mask in enumerate(masks):
            if mask[tuple(c // 2**j for c in cell)]:
                labels[cell] = j + 1
                break
    return labels


def test_hand_built_model_with_a_cropped_grid():
    # 40 x 72 pixels, 8-pixel blocks: level grids 5x9, 3x5 (covers 6x10 cells), 2x3 (covers 8x12)
    config = MinerConfig(n_levels=3, block_size=8)
    model = _hand_built(
        (40, 72), config, {0: [(0, 0), (3, 5)], 1: [(0, 0), (2, 4)], 2: [(0, 0), (1, 1)]}
    )
    assert [lv.active_mask().shape for lv in model.levels] == [(5, 9), (3, 5), (2, 3)]
    labels, scale, translate = active_block_labels(model)
    expected = np.array(
        [
            [1, 2, 3, 3, 0, 0, 0, 0, 0],
            [2, 2, 3, 3, 0, 0, 0, 0, 0],
            [3, 3, 3, 3, 0, 0, 0, 0, 0],
            [3, 3, 3, 3, 0, 1, 0, 0, 0],
            [0, 0, 0, 0, 3, 3, 3, 3, 2],  # level-1 (2, 4) and level-2 (1, 1), cropped
        ]
    )
    np.testing.assert_array_equal(labels, expected)
    assert np.issubdtype(labels.dtype, np.integer)
    assert scale == (8.0, 8.0)
    assert translate == (3.5, 3.5)
    np.testing.assert_array_equal(labels, _brute_force(model))


def test_no_mlp_anywhere_is_all_zero():
    model = _hand_built((30, 30), MinerConfig(n_levels=2, block_size=4), {})
    labels, _, _ = active_block_labels(model)
    assert labels.shape == (8, 8) and not labels.any()


def test_cells_line_up_with_the_pixels_they_cover():
    """napari puts cell i at i*scale + translate: the centre of pixels i*b ... (i+1)*b - 1."""
    model = _hand_built((40, 72), MinerConfig(n_levels=3, block_size=8), {})
    labels, scale, translate = active_block_labels(model)
    for axis, n in enumerate(labels.shape):
        b = model.config.block_size
        centres = np.arange(n) * scale[axis] + translate[axis]
        np.testing.assert_allclose(centres, [np.mean(range(i * b, (i + 1) * b)) for i in range(n)])


def test_only_the_detailed_corner_is_active():
    image = np.zeros((64, 64), dtype=np.float32)
    image[:20, :20] = np.random.default_rng(0).random((20, 20))  # detail in one corner only
    model = fit(image, MinerConfig(n_levels=3, block_size=8, max_steps=30), device="cpu")
    labels, _, _ = active_block_labels(model)
    assert labels.shape == (8, 8)
    np.testing.assert_array_equal(labels, _brute_force(model))
    assert labels[:3, :3].min() == 1  # blocks over the detail need full-resolution MLPs
    assert not labels[4:, :].any() and not labels[:, 4:].any()  # the flat rest needs none
    # a cell is labelled j + 1 iff level j's covering block is active and no finer one is
    covers = [
        np.kron(lv.active_mask(), np.ones((2**j, 2**j), dtype=bool))[:8, :8]
        for j, lv in enumerate(model.levels)
    ]
    finer = np.zeros((8, 8), dtype=bool)
    for j, cover in enumerate(covers):
        np.testing.assert_array_equal(labels == j + 1, cover & ~finer)
        finer |= cover
    np.testing.assert_array_equal(labels == 0, ~finer)


@pytest.mark.parametrize("shape", [(12, 20, 28), (9, 16, 16)])
def test_volume_labels_match_the_masks(shape):
    volume = np.random.default_rng(1).random(shape, dtype=np.float32)
    volume[:, :, shape[2] // 2 :] = 0
    model = fit(volume, MinerConfig(n_levels=2, block_size=4, max_steps=10), device="cpu")
    labels, scale, translate = active_block_labels(model)
    assert labels.shape == model.levels[0].grid.grid_shape
    assert scale == (4.0,) * 3 and translate == (1.5,) * 3
    np.testing.assert_array_equal(labels, _brute_force(model))
