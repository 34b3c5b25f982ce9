"""A bank of independent per-block SIREN MLPs evaluated together with batched matrix products.

Layer ``l`` of the bank is one weight tensor ``(n_blocks, out, in)`` and one bias tensor
``(n_blocks, out, 1)``; activations are ``(n_blocks, features, n_pixels)``. The SIREN frequency factor
``omega_0`` is folded into the stored sine-layer weights, so evaluation is ``sin(W h + b)`` for every
layer but the last, which is linear. There is no Python loop over blocks.
"""

from __future__ import annotations

import math

import torch

Params = list[torch.Tensor]


def layer_sizes(in_dim: int, width: int, hidden_layers: int, out_dim: int) -> list[tuple[int, int]]:
    """``(out, in)`` of every linear layer: in→w, (w→w)×hidden_layers, w→out."""
    return [(width, in_dim)] + [(width, width)] * hidden_layers + [(out_dim, width)]


def init_bank(
    n_blocks: int,
    in_dim: int,
    width: int,
    hidden_layers: int,
    out_dim: int,
    omega_0: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> tuple[Params, Params]:
    """SIREN initialisation (Sitzmann et al. 2020) with ``omega_0`` folded into the sine layers.

    Returns
    -------
    weights, biases : list of torch.Tensor
        Per layer, ``(n_blocks, out, in)`` weights and ``(n_blocks, out, 1)`` biases.
    """
    sizes = layer_sizes(in_dim, width, hidden_layers, out_dim)
    weights: Params = []
    biases: Params = []
    for index, (n_out, n_in) in enumerate(sizes):
        if index == 0:
            w_bound, b_bound = omega_0 / n_in, omega_0 / math.sqrt(n_in)
        elif index < len(sizes) - 1:
            w_bound, b_bound = math.sqrt(6 / n_in), omega_0 / math.sqrt(n_in)
        else:
            w_bound, b_bound = math.sqrt(6 / n_in) / omega_0, 0.0
        w = torch.rand((n_blocks, n_out, n_in), generator=generator) * (2 * w_bound) - w_bound
        b = torch.rand((n_blocks, n_out, 1), generator=generator) * (2 * b_bound) - b_bound
        weights.append(w.to(device))
        biases.append(b.to(device))
    return weights, biases


def lr_multipliers(n_layers: int, omega_0: float) -> list[float]:
    """Learning-rate factor per layer that makes Adam on folded weights match plain SIREN training."""
    return [omega_0] * (n_layers - 1) + [1.0]


def bank_forward(weights: Params, biases: Params, coords: torch.Tensor) -> torch.Tensor:
    """Evaluate every block's MLP at shared local coordinates.

    Parameters
    ----------
    weights, biases : list of torch.Tensor
        The bank, as returned by :func:`init_bank`.
    coords : torch.Tensor
        ``(in_dim, n_pixels)`` local coordinates, the same for every block.

    Returns
    -------
    torch.Tensor
        ``(n_blocks, out_dim, n_pixels)``.
    """
    n = weights[0].shape[0]
    h = torch.baddbmm(biases[0], weights[0], coords.expand(n, *coords.shape))
    for w, b in zip(weights[1:], biases[1:], strict=True):
        h = torch.baddbmm(b, w, torch.sin(h))
    return h


def bank_forward_chunked(
    weights: Params, biases: Params, coords: torch.Tensor, chunk: int = 512
) -> torch.Tensor:
    """:func:`bank_forward` without gradients, in chunks of blocks to bound memory."""
    n = weights[0].shape[0]
    out_dim = weights[-1].shape[1]
    out = torch.empty((n, out_dim, coords.shape[1]), device=coords.device, dtype=coords.dtype)
    with torch.no_grad():
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            out[part] = bank_forward([w[part] for w in weights], [b[part] for b in biases], coords)
    return out


def bank_sse_and_grads(
    weights: Params,
    biases: Params,
    coords: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    chunk: int = 16,
) -> tuple[torch.Tensor, Params, Params]:
    """Squared error of every block and its gradient, by a hand-written backward pass.

    Blocks are independent, so the bank is processed in chunks of ``chunk`` blocks: on a CPU a chunk's
    activations stay in cache, which is faster than whole-bank tensors; on a GPU pass a large chunk.

    Parameters
    ----------
    weights, biases : list of torch.Tensor
        The bank (no gradient tracking needed).
    coords : torch.Tensor
        ``(in_dim, n_pixels)`` local coordinates shared by all blocks.
    targets : torch.Tensor
        ``(n_blocks, out_dim, n_pixels)`` values to fit.
    mask : torch.Tensor, optional
        ``(n_blocks, 1, n_pixels)`` weights of the pixels (0 on padding).
    chunk : int
        Blocks per chunk.

    Returns
    -------
    sse : torch.Tensor
        ``(n_blocks,)`` sum of (masked) squared errors.
    grad_weights, grad_biases : list of torch.Tensor
        Gradients of ``sse.sum() / 2`` with respect to the bank.
    """
    n = weights[0].shape[0]
    n_layers = len(weights)
    grad_w = [torch.empty_like(w) for w in weights]
    grad_b = [torch.empty_like(b) for b in biases]
    sse = torch.empty(n, device=targets.device, dtype=targets.dtype)
    with torch.no_grad():
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            ws = [w[part] for w in weights]
            k = ws[0].shape[0]
            inputs = [coords.expand(k, *coords.shape)]
            pre: list[torch.Tensor] = []
            for layer in range(n_layers - 1):
                z = torch.baddbmm(biases[layer][part], ws[layer], inputs[-1])
                pre.append(z)
                inputs.append(torch.sin(z))
            delta = torch.baddbmm(biases[-1][part], ws[-1], inputs[-1]).sub_(targets[part])
            if mask is not None:
                delta.mul_(mask[part])
            sse[part] = delta.square().sum(dim=(1, 2))
            for layer in range(n_layers - 1, -1, -1):
                torch.bmm(delta, inputs[layer].transpose(1, 2), out=grad_w[layer][part])
                torch.sum(delta, dim=2, keepdim=True, out=grad_b[layer][part])
                if layer == 0:
                    break
                delta = torch.bmm(ws[layer].transpose(1, 2), delta).mul_(pre[layer - 1].cos_())
    return sse, grad_w, grad_b


def params_per_mlp(sizes: list[tuple[int, int]]) -> int:
    """Scalars of one MLP with layers of ``(out, in)`` sizes (see :func:`layer_sizes`)."""
    return sum(o * i + o for o, i in sizes)


def pack_bank(weights: Params, biases: Params) -> torch.Tensor:
    """The bank as one ``(n, P)`` tensor (inverse of :func:`unpack_bank`).

    Per MLP, layer by layer: the weights (row-major), then the biases.
    """
    n = weights[0].shape[0]
    parts = []
    for w, b in zip(weights, biases, strict=True):
        parts += [w.reshape(n, -1), b.reshape(n, -1)]
    return torch.cat(parts, dim=1)


def unpack_bank(params: torch.Tensor, sizes: list[tuple[int, int]]) -> tuple[Params, Params]:
    """Split ``(n, P)`` packed MLPs (see :func:`pack_bank`) into weights and biases (views)."""
    n = params.shape[0]
    weights: Params = []
    biases: Params = []
    start = 0
    for n_out, n_in in sizes:
        weights.append(params[:, start : start + n_out * n_in].reshape(n, n_out, n_in))
        start += n_out * n_in
        biases.append(params[:, start : start + n_out].reshape(n, n_out, 1))
        start += n_out
    if start != params.shape[1]:
        raise ValueError(f"packed MLPs have {params.shape[1]} values each, the layers {start}")
    return weights, biases


def count_parameters(weights: Params, biases: Params) -> int:
    """Number of stored scalars (weights and biases) in a bank."""
    return sum(t.numel() for t in weights) + sum(t.numel() for t in biases)


def _first_layer(
    weight: torch.Tensor, bias: torch.Tensor, axis: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``sin`` of the first layer over a block's pixel grid, by the angle-addition identity.

    The pre-activation is ``P + Q``: ``P`` sums the bias and every axis but the last (one value
    per line of the block), ``Q`` the last axis (one value per position along a line). So
    ``sin(P + Q) = sin P cos Q + cos P sin Q`` takes ``b**(d-1) + b`` sines per feature instead
    of ``b**d``, and two multiply-adds per pixel. Written into ``out`` (``(k, width, b**d)``).
    """
    k, width, ndim = weight.shape
    lines = bias.reshape(k, width, *([1] * (ndim - 1)))
    for a in range(ndim - 1):
        shape = [1] * (ndim - 1)
        shape[a] = -1
        lines = lines + weight[:, :, a].reshape(k, width, *([1] * (ndim - 1))) * axis.reshape(shape)
    lines = lines.reshape(k, width, -1, 1)
    along = (weight[:, :, ndim - 1 :] * axis).unsqueeze(2)  # (k, width, 1, b)
    grid = out.view(k, width, lines.shape[2], axis.numel())
    torch.mul(lines.sin(), along.cos(), out=grid)
    grid.addcmul_(lines.cos_(), along.sin_())
    return out


def bank_decode(
    weights: Params, biases: Params, block_size: int, ndim: int, chunk: int | None = None
) -> torch.Tensor:
    """Every block's MLP over all of its pixels: :func:`bank_forward` at the block's pixel grid.

    The fast path of decoding: the first layer by :func:`_first_layer`, sines in place, two
    activation buffers reused from chunk to chunk (no allocation per layer), and chunks of
    blocks small enough for their activations to stay in a CPU's cache. Equal to
    :func:`bank_forward` to float32 rounding.

    Parameters
    ----------
    weights, biases : list of torch.Tensor
        The bank (``in_dim == ndim``).
    block_size, ndim : int
        The blocks' side and number of axes (the pixels of
        :func:`~napari_miner.core.blocks.local_coordinates`).
    chunk : int, optional
        Blocks per chunk (default: about 32k pixels' worth on a CPU, all of them on a GPU).

    Returns
    -------
    torch.Tensor
        ``(n_blocks, out_dim, block_size**ndim)``.
    """
    n = weights[0].shape[0]
    device = weights[0].device
    pixels = block_size**ndim
    if chunk is None:
        chunk = n if device.type != "cpu" else max(1, 2**15 // pixels)
    chunk = max(1, min(chunk, n))
    axis = (torch.arange(block_size, dtype=torch.float32, device=device) * 2 + 1) / block_size - 1
    out = torch.empty((n, weights[-1].shape[1], pixels), device=device)
    width = weights[0].shape[1]
    buffers = [torch.empty((chunk, width, pixels), device=device) for _ in range(2)]
    with torch.no_grad():
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            k = weights[0][part].shape[0]
            h, spare = (buf[:k] for buf in buffers)
            _first_layer(weights[0][part], biases[0][part], axis, h)
            for w, b in zip(weights[1:-1], biases[1:-1], strict=True):
                torch.baddbmm(b[part], w[part], h, out=spare).sin_()
                h, spare = spare, h
            torch.baddbmm(biases[-1][part], weights[-1][part], h, out=out[part])
    return out
