import torch

from napari_miner.core.blocks import local_coordinates
from napari_miner.core.mlp_bank import (
    bank_forward,
    bank_forward_chunked,
    bank_sse_and_grads,
    count_parameters,
    init_bank,
    layer_sizes,
)


def _bank(n=5, width=8, hidden=2, out=3, omega=20.0):
    gen = torch.Generator().manual_seed(3)
    return init_bank(n, 2, width, hidden, out, omega, gen)


def _run_one_by_one(weights, biases, coords):
    """The same MLPs as separate torch.nn modules, evaluated one block at a time."""
    outputs = []
    for block in range(weights[0].shape[0]):
        h = coords.T
        for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
            linear = torch.nn.Linear(w.shape[2], w.shape[1])
            with torch.no_grad():
                linear.weight.copy_(w[block])
                linear.bias.copy_(b[block, :, 0])
            h = linear(h)
            if layer < len(weights) - 1:
                h = torch.sin(h)
        outputs.append(h.T)
    return torch.stack(outputs)


def test_bank_equals_mlps_run_one_by_one():
    weights, biases = _bank()
    coords = local_coordinates(8, 2)
    with torch.no_grad():
        expected = _run_one_by_one(weights, biases, coords)
    torch.testing.assert_close(
        bank_forward(weights, biases, coords), expected, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        bank_forward_chunked(weights, biases, coords, chunk=2), expected, atol=1e-5, rtol=1e-5
    )


def test_hand_written_gradients_match_autograd():
    weights, biases = _bank(n=7)
    coords = local_coordinates(8, 2)
    targets = torch.rand(7, 3, 64, generator=torch.Generator().manual_seed(1))
    mask = (torch.rand(7, 1, 64, generator=torch.Generator().manual_seed(2)) > 0.3).float()
    params = [p.clone().requires_grad_(True) for p in weights + biases]
    out = bank_forward(params[:4], params[4:], coords)
    loss = ((out - targets).square() * mask).sum() / 2
    expected = torch.autograd.grad(loss, params)
    sse, grad_w, grad_b = bank_sse_and_grads(weights, biases, coords, targets, mask, chunk=3)
    torch.testing.assert_close(sse.sum() / 2, loss.detach(), rtol=1e-5, atol=1e-6)
    for got, want in zip(grad_w + grad_b, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_blocks_are_independent():
    weights, biases = _bank(n=4)
    coords = local_coordinates(8, 2)
    targets = torch.rand(4, 3, 64)
    _, grad_all, _ = bank_sse_and_grads(weights, biases, coords, targets)
    _, grad_two, _ = bank_sse_and_grads(
        [w[2:] for w in weights], [b[2:] for b in biases], coords, targets[2:]
    )
    for full, part in zip(grad_all, grad_two, strict=True):
        torch.testing.assert_close(full[2:], part)


def test_parameter_count_matches_layer_sizes():
    weights, biases = _bank(n=5, width=8, hidden=2, out=3)
    per_block = sum(o * i + o for o, i in layer_sizes(2, 8, 2, 3))
    assert per_block == (2 * 8 + 8) + 2 * (8 * 8 + 8) + (8 * 3 + 3)
    assert count_parameters(weights, biases) == 5 * per_block
