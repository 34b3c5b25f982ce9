"""The banks of a level: main, lite and the split banks of level 0."""

from napari_miner.core.banks import level_banks
from napari_miner.core.config import MinerConfig


def test_every_level_has_a_main_and_a_lite_bank_and_level_0_its_splits():
    config = MinerConfig(max_splits=2, split_width=6, lite_width=8)
    names = [bank.name for bank in level_banks(config, 0)]
    assert names == ["main", "lite", "split1", "split2"]
    assert [bank.name for bank in level_banks(config, 1)] == ["main", "lite"]
    main, lite, split1, split2 = level_banks(config, 0)
    assert main.width == config.width_at(0) and lite.width == 8
    assert (split1.block_size, split2.block_size) == (16, 8) and split1.width == 6
    assert level_banks(config, 3)[0].width == config.width_at(3)  # the coarsest is wider


def test_banks_can_be_turned_off():
    config = MinerConfig(max_splits=0, lite_width=None)
    assert [bank.name for bank in level_banks(config, 0)] == ["main"]
    assert level_banks(MinerConfig(split_width=None), 0)[-1].width == MinerConfig().hidden_width


def test_bank_geometry():
    split = level_banks(MinerConfig(), 0)[-1]
    grid = split.grid((100, 64))
    assert grid.grid_shape == (7, 4)  # blocks of 16 over 100 x 64
    sizes = split.layer_sizes(2, 3)
    assert sizes[0] == (8, 2) and sizes[-1] == (3, 8)
    assert split.params_per_mlp(2, 3) == sum(o * i + o for o, i in sizes)
