"""Tests for :mod:`napari_miner.core.capacity`: which blocks split, which MLPs level 0 spares."""

import numpy as np
import torch

from napari_miner.core.blocks import BlockGrid
from napari_miner.core.capacity import children_of, spared_mlps, worst_blocks
from napari_miner.core.config import MinerConfig


def test_spared_drops_harmful_mlps_then_the_least_useful_within_the_slack():
    gains = torch.tensor([5.0, -1.0, 1.0, 3.0, 0.0], dtype=torch.float64)
    assert spared_mlps(gains, 0.5).tolist() == [False, True, True, False, True]  # 0.5 + 1 covers 1
    assert spared_mlps(gains, 4.0).tolist() == [False, True, True, True, True]  # 1 + 3 <= 5
    assert spared_mlps(gains, -2.0).tolist() == [False, True, False, False, True]  # only harmful


def test_worst_blocks_take_the_fewest_whose_excess_closes_the_gap():
    config = MinerConfig(target_psnr=20.0)  # a block's share of the error: MSE 0.01
    energy = torch.tensor([0.005, 0.11, 0.02, 0.51], dtype=torch.float64)
    counts = torch.full((4,), 100.0, dtype=torch.float64)
    # missing = 64.5 - 4 = 60.5; excess = 0, 10, 1, 50: 50 + 10 < 1.5 * 60.5, so all three
    assert worst_blocks(energy, counts, config).tolist() == [1, 2, 3]
    energy = torch.tensor([0.005, 0.0101, 0.0, 0.51], dtype=torch.float64)
    # missing = 48.51: block 3 (excess 50) is short of 1.5x that, so block 1 (0.01) joins;
    # blocks 0 and 2 are within their share and never split
    assert worst_blocks(energy, counts, config).tolist() == [1, 3]


def test_children_of_a_parent_are_its_two_to_the_d_blocks_clipped_to_the_grid():
    grid = BlockGrid((5, 6), block_size=2)  # 3 x 3 blocks
    chosen = np.zeros((2, 2), dtype=bool)
    chosen[1, 0] = True
    assert children_of(chosen, grid).tolist() == [6, 7]  # rows 2-3 -> only row 2 exists
    chosen[0, 1] = True
    assert children_of(chosen, grid).tolist() == [2, 5, 6, 7]
    assert children_of(np.zeros((2, 2), dtype=bool), grid).numel() == 0
