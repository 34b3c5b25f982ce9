import torch

from napari_miner.core.adam import CompactAdam


def test_matches_torch_adam():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(4, 3, 2, generator=gen)
    grads = [torch.randn(4, 3, 2, generator=gen) for _ in range(5)]
    ours = CompactAdam([start.clone()], [2.0])
    reference = start.clone().requires_grad_(True)
    torch_adam = torch.optim.Adam([reference], lr=0.02)
    for g in grads:
        ours.step([g], lr=0.01)  # factor 2 -> effective 0.02
        reference.grad = g.clone()
        torch_adam.step()
    torch.testing.assert_close(ours.params[0], reference.detach())


def test_keep_compacts_parameters_and_moments_together():
    gen = torch.Generator().manual_seed(0)
    adam = CompactAdam([torch.randn(4, 2, generator=gen)], [1.0])
    adam.step([torch.randn(4, 2, generator=gen)], lr=0.1)
    kept_m = adam.exp_avg[0][[0, 3]].clone()
    kept_p = adam.params[0][[0, 3]].clone()
    adam.keep(torch.tensor([0, 3]))
    assert adam.n_blocks == 2
    torch.testing.assert_close(adam.exp_avg[0], kept_m)
    torch.testing.assert_close(adam.params[0], kept_p)
