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


def test_tensor_factors_scale_each_block_and_follow_compaction():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, 2, generator=gen)
    grads = [torch.randn(3, 2, generator=gen) for _ in range(3)]
    per_block = CompactAdam([start.clone()], [torch.tensor([[2.0], [0.0], [1.0]])])
    uniform = CompactAdam([start.clone()], [2.0])
    for g in grads:
        per_block.step([g], lr=0.01)
        uniform.step([g], lr=0.01)
    torch.testing.assert_close(per_block.params[0][0], uniform.params[0][0])
    torch.testing.assert_close(per_block.params[0][1], start[1])  # factor 0: never moves
    per_block.keep(torch.tensor([2]))
    assert per_block.lr_factors[0].tolist() == [[1.0]]
