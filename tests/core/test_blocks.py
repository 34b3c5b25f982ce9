import pytest
import torch

from napari_miner.core.blocks import (
    BlockGrid,
    array_from_blocks,
    blocks_from_array,
    local_coordinates,
)


@pytest.mark.parametrize(("shape", "block"), [((50, 70), 16), ((32, 32), 32), ((9, 20, 13), 4)])
def test_unfold_then_fold_is_identity(shape, block):
    x = torch.rand((3, *shape))
    grid = BlockGrid(shape, block)
    blocks = grid.unfold(x)
    assert blocks.shape == (grid.n_blocks, 3, block ** len(shape))
    torch.testing.assert_close(grid.fold(blocks), x, atol=0, rtol=0)


def test_padding_replicates_edges_and_covers_every_pixel():
    grid = BlockGrid((5, 7), 4)
    assert grid.grid_shape == (2, 2)
    assert grid.padded_shape == (8, 8)
    x = torch.arange(35.0).reshape(1, 5, 7)
    padded = grid.pad(x)
    torch.testing.assert_close(padded[0, :5, :7], x[0])
    torch.testing.assert_close(padded[0, 7, :7], x[0, 4])  # last row repeated
    torch.testing.assert_close(padded[0, :5, 7], x[0, :, 6])  # last column repeated


def test_block_order_is_c_order_over_the_grid():
    x = torch.zeros(1, 4, 6)
    x[0, 2:4, 0:2] = 1.0  # block (row 1, col 0) -> index 3 in a 2x3 grid
    blocks = blocks_from_array(x, 2)
    assert torch.nonzero(blocks.sum(dim=(1, 2))).flatten().tolist() == [3]
    torch.testing.assert_close(array_from_blocks(blocks, (2, 3), 2), x)


def test_valid_mask_marks_real_pixels():
    grid = BlockGrid((5, 7), 4)
    mask = grid.valid_mask()
    assert mask.shape == (4, 1, 16)
    assert int(mask.sum()) == 35
    torch.testing.assert_close(grid.fold(mask), torch.ones(1, 5, 7))


def test_block_range_of_a_region():
    grid = BlockGrid((100, 100), 32)
    assert grid.block_range([slice(31, 33), slice(0, 100)]) == ((0, 2), (0, 4))


def test_local_coordinates_are_pixel_centres_in_unit_cube():
    coords = local_coordinates(4, 2)
    assert coords.shape == (2, 16)
    assert coords.min() == -0.75 and coords.max() == 0.75
    torch.testing.assert_close(coords[:, 1], torch.tensor([-0.75, -0.25]))
