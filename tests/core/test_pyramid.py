import pytest
import torch

from napari_miner.core.pyramid import (
    area_downsample,
    gaussian_targets,
    laplacian_residuals,
    level_shapes,
    reconstruct,
    upsample,
)


@pytest.mark.parametrize("shape", [(3, 64, 48), (1, 37, 51), (2, 17, 9, 23)])
def test_laplacian_levels_rebuild_the_input(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    targets = gaussian_targets(x, 4)
    rebuilt = reconstruct(laplacian_residuals(targets))
    assert rebuilt.shape == x.shape
    torch.testing.assert_close(rebuilt, x, atol=1e-6, rtol=0)


def test_level_shapes_round_up():
    assert level_shapes((37, 51), 4) == [(37, 51), (19, 26), (10, 13), (5, 7)]


def test_area_downsample_averages_2x2_blocks():
    x = torch.arange(16.0).reshape(1, 4, 4)
    expected = torch.tensor([[[2.5, 4.5], [10.5, 12.5]]])
    torch.testing.assert_close(area_downsample(x), expected)


def test_area_downsample_replicates_odd_edges():
    x = torch.arange(3.0).reshape(1, 1, 3).expand(1, 2, 3)
    # last column is averaged with its own replica: (2 + 2) / 2
    torch.testing.assert_close(area_downsample(x), torch.tensor([[[0.5, 2.0]]]))


def test_upsample_preserves_constants_and_crops():
    x = torch.full((2, 5, 7), 0.25)
    up = upsample(x, (9, 13))
    assert up.shape == (2, 9, 13)
    torch.testing.assert_close(up, torch.full((2, 9, 13), 0.25))


def test_upsample_is_bilinear_between_pixel_centres():
    x = torch.tensor([[[0.0, 1.0]]])
    up = upsample(x, (1, 4))
    torch.testing.assert_close(up, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))


def test_rejects_one_dimensional_signal():
    with pytest.raises(ValueError, match="spatial"):
        area_downsample(torch.zeros(1, 8))
