"""The optimisation of one bank of per-block MLPs: the inner loop of every level's training.

:class:`BankFit` trains a bank on its blocks' residuals: each block's residual is standardised while it
trains (per-channel mean removed, divided by its RMS; both folded back into the last layer when the
block is stored), so one learning rate suits blocks of any amplitude. Every ``check_every`` steps the
exact MSE of each block is evaluated and blocks below ``retire_mse`` retire: their weights are stored
and dropped, with their Adam moments, from the optimised tensors. The bank ends when all its blocks
retired, its level's MSE plateaus, at ``max_steps``, or when the level reaches its target.

:func:`fine_tune_quantized` quantises a trained bank, with a short layer-by-layer fine-tune when
rounding it at once costs too much.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .adam import CompactAdam
from .config import MinerConfig
from .mlp_bank import bank_forward_chunked, bank_sse_and_grads, lr_multipliers
from .model import LevelParams
from .quantize import fake_quantize, quantize_layer

__all__ = ["BankFit", "Standardization", "bank_mse", "fine_tune_quantized"]

Report = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], None]
"""``report(rows, mse, prediction)``: the exact MSE of the bank rows still training (and, at exact
checks, their predictions in the blocks' own units, else ``None``)."""


@dataclass(frozen=True)
class Standardization:
    """Per-block ``scale`` (n,) and per-block, per-channel ``offset`` (n, C) of the training goals."""

    scale: torch.Tensor
    offset: torch.Tensor

    @classmethod
    def of(cls, blocks: torch.Tensor, mask: torch.Tensor) -> Standardization:
        """The standardisation of ``(n, C, pixels)`` blocks over their real pixels (``mask``)."""
        offset = (blocks * mask).sum(dim=2) / mask.sum(dim=2)
        centered = blocks - offset[:, :, None]
        counts = mask.sum(dim=(1, 2)) * blocks.shape[1]
        spread = ((centered.square() * mask).sum(dim=(1, 2)) / counts).sqrt()
        return cls(spread.clamp_min(1e-6), offset)

    def goals(self, blocks: torch.Tensor) -> torch.Tensor:
        """The blocks in standardised units."""
        return (blocks - self.offset[:, :, None]) / self.scale[:, None, None]


def bank_mse(
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
    coords: torch.Tensor,
    blocks: torch.Tensor,
    masks: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact MSE of every MLP of a bank on its block (real pixels only), and its outputs."""
    out = bank_forward_chunked(weights, biases, coords)
    sq = (out - blocks).square()
    if masks is None:
        return sq.mean(dim=(1, 2)), out
    return (sq * masks).sum(dim=(1, 2)) / (masks.sum(dim=(1, 2)) * blocks.shape[1]), out


class BankFit:
    """Trains the MLPs of a bank (see the module docstring).

    Parameters
    ----------
    bank : LevelParams
        The bank, freshly initialised; trained blocks are stored into it (standardisation folded
        into the last layer).
    blocks : torch.Tensor
        ``(n, C, pixels)`` residual of each of the bank's blocks.
    masks : torch.Tensor or None
        ``(n, 1, pixels)`` real-pixel masks (``None``: every pixel is real).
    coords : torch.Tensor
        Local coordinates of the bank's blocks.
    config : MinerConfig
        Training settings.
    learning_rate : float
        Adam's learning rate at the first step.
    plateau : float
        Relative MSE improvement per check below which the bank ends.
    chunk : int
        Blocks per chunk of the backward pass.
    generator : torch.Generator
        Source of pixel samples.
    """

    def __init__(
        self,
        bank: LevelParams,
        blocks: torch.Tensor,
        masks: torch.Tensor | None,
        coords: torch.Tensor,
        config: MinerConfig,
        learning_rate: float,
        plateau: float,
        chunk: int,
        generator: torch.Generator,
    ) -> None:
        self.bank, self.config = bank, config
        self.norm = Standardization.of(blocks, masks if masks is not None else _ones(blocks))
        self._goals = self.norm.goals(blocks)
        self._masks = masks
        self._scales_sq = self.norm.scale.square()
        self._coords, self._chunk, self._generator = coords, chunk, generator
        self._lr, self._plateau = learning_rate, plateau
        n_layers = len(bank.weights)
        factors = lr_multipliers(n_layers, config.omega_0) * 2
        self.optimizer = CompactAdam(bank.weights + bank.biases, factors)
        self.rows = torch.arange(bank.block_ids.numel(), device=blocks.device)
        self.steps = 0
        self.ended = "not started"

    def run(
        self,
        report: Report,
        level_mse: Callable[[], float],
        reached: Callable[[float], bool],
        progress: Callable[[int, float], object],
        diverged: Callable[[], Exception],
    ) -> Iterator[object]:
        """Train; yields what ``progress(step, level_mse)`` returns every ``progress_every`` steps.

        ``report`` receives the block errors, ``level_mse()`` gives the level's MSE after them,
        ``reached(mse)`` says whether the level reached its target (then the bank ends).
        """
        cfg = self.config
        optimizer, n_layers = self.optimizer, len(self.bank.weights)
        pixels = self._coords.shape[1]
        n_sample = max(1, round(cfg.pixel_fraction * pixels))
        n_channels = self._goals.shape[1]
        goals, masks, scales_sq, rows = self._goals, self._masks, self._scales_sq, self.rows
        previous: float | None = None
        step = 0
        self.ended = "max_steps"
        while step < cfg.max_steps and rows.numel():
            coords, goal, weight = self._coords, goals, masks
            if n_sample < pixels:
                pick = torch.randperm(pixels, generator=self._generator)[:n_sample].sort().values
                pick = pick.to(coords.device)
                coords, goal = coords[:, pick], goal[:, :, pick]
                weight = None if weight is None else weight[:, :, pick]
            params = optimizer.params
            sse, grad_w, grad_b = bank_sse_and_grads(
                params[:n_layers], params[n_layers:], coords, goal, weight, self._chunk
            )
            optimizer.step(grad_w + grad_b, self._lr * cfg.lr_decay**step)
            step += 1
            self.steps = step
            if step % cfg.progress_every == 0:
                # the step's own (sampled, pre-update) block errors: cheap, and close enough
                seen = coords.shape[1] if weight is None else weight.sum(dim=(1, 2)).clamp_min(1)
                report(rows, sse / (seen * n_channels) * scales_sq, None)
                mse = level_mse()
                if not math.isfinite(mse):
                    raise diverged()
                yield progress(step, mse)
            if step % cfg.check_every and step < cfg.max_steps:
                continue
            params = optimizer.params
            exact, out = bank_mse(params[:n_layers], params[n_layers:], self._coords, goals, masks)
            exact = exact * scales_sq
            if not bool(torch.isfinite(exact).all()):
                raise diverged()
            scale, offset = self.norm.scale[rows], self.norm.offset[rows]
            report(rows, exact, out * scale[:, None, None] + offset[:, :, None])
            mse = level_mse()
            retire = exact < cfg.retire_mse
            if bool(retire.any()):
                self._store(retire)
                keep = torch.nonzero(~retire).flatten()
                optimizer.keep(keep)
                rows, goals, scales_sq = rows[keep], goals[keep], scales_sq[keep]
                masks = None if masks is None else masks[keep]
                self.rows = rows
            if reached(mse):
                self.ended = "target"
                break
            if previous is not None and previous - mse < self._plateau * previous:
                self.ended = "plateau"
                break
            previous = mse
        if rows.numel():
            self._store(torch.ones_like(rows, dtype=torch.bool))
        elif self.ended == "max_steps" and step < cfg.max_steps:
            self.ended = "retired"
        self.rows = rows[:0]

    def _store(self, which: torch.Tensor, into: LevelParams | None = None) -> None:
        """Write the selected optimised rows, standardisation folded in, into the bank."""
        into = self.bank if into is None else into
        n_layers = len(into.weights)
        params = self.optimizer.params
        target_rows = self.rows[which]
        scale = self.norm.scale[target_rows][:, None, None]
        for layer in range(n_layers):
            w, b = params[layer][which], params[n_layers + layer][which]
            if layer == n_layers - 1:
                w, b = w * scale, b * scale + self.norm.offset[target_rows][:, :, None]
            into.weights[layer][target_rows] = w
            into.biases[layer][target_rows] = b

    def store_current(self, into: LevelParams) -> None:
        """Write the rows still training, at their current weights, into ``into`` (a copy)."""
        if self.rows.numel():
            self._store(torch.ones_like(self.rows, dtype=torch.bool), into)


def _ones(blocks: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(blocks[:, :1])


def fine_tune_quantized(
    bank: LevelParams,
    blocks: torch.Tensor,
    masks: torch.Tensor | None,
    coords: torch.Tensor,
    bits: int,
    cost: Callable[[torch.Tensor], float],
    budget: float,
    chunk: int,
    steps_per_layer: int = 30,
    learning_rate: float = 1e-2,
) -> float:
    """Quantise a trained bank, fine-tuning it layer by layer when rounding costs too much.

    The bank's weights are replaced by weights on the grid of ``bits`` bits. ``cost(sse)`` turns
    the bank's per-block squared errors (on ``blocks``, in the blocks' own units) into what the
    quantisation costs the level (dB). When rounding every layer at once costs more than
    ``budget``, the layers are quantised one at a time, first to last, and after each the layers
    still in float take ``steps_per_layer`` Adam steps on the bank's error, with step sizes
    relative to each block's weights: the later layers learn to undo the rounding of the earlier
    ones. The cheaper of the two quantisations is kept.

    Returns
    -------
    float
        What the kept quantisation costs, in dB.
    """
    n_layers = len(bank.weights)
    bank.bits = bits
    if not bank.block_ids.numel():
        return 0.0

    def sse_of(params: list[torch.Tensor]) -> torch.Tensor:
        mse, _ = bank_mse(params[:n_layers], params[n_layers:], coords, blocks, masks)
        counts = (masks.sum(dim=(1, 2)) if masks is not None else blocks.shape[2]) * blocks.shape[1]
        return mse * counts

    floats = [t.detach() for t in bank.weights + bank.biases]
    qw, qb = fake_quantize(floats[:n_layers], floats[n_layers:], bits)
    best = qw + qb
    best_cost = cost(sse_of(best))
    if best_cost > budget and n_layers > 1:
        params = _quantized_layer_by_layer(
            floats, blocks, masks, coords, bits, chunk, steps_per_layer, learning_rate
        )
        progressive = cost(sse_of(params))
        if progressive < best_cost:
            best, best_cost = params, progressive
    bank.weights[:] = best[:n_layers]
    bank.biases[:] = best[n_layers:]
    return best_cost


def _quantized_layer_by_layer(
    params: list[torch.Tensor],
    blocks: torch.Tensor,
    masks: torch.Tensor | None,
    coords: torch.Tensor,
    bits: int,
    chunk: int,
    steps: int,
    learning_rate: float,
) -> list[torch.Tensor]:
    """Progressive quantisation (see :func:`fine_tune_quantized`): weights, then biases per layer."""
    n_layers = len(params) // 2
    params = [t.clone() for t in params]
    for layer in range(n_layers):
        params[layer], params[n_layers + layer] = quantize_layer(
            params[layer], params[n_layers + layer], bits, layer
        )
        free = [k for k in range(len(params)) if k % n_layers > layer]
        if not free:
            break
        factors = [
            params[k]
            .abs()
            .flatten(1)
            .mean(1)
            .clamp_min(1e-12)
            .reshape(-1, *[1] * (params[k].ndim - 1))
            for k in free
        ]
        optimizer = CompactAdam([params[k] for k in free], factors)
        for _ in range(steps):
            _, grad_w, grad_b = bank_sse_and_grads(
                params[:n_layers], params[n_layers:], coords, blocks, masks, chunk
            )
            grads = grad_w + grad_b
            optimizer.step([grads[k] for k in free], learning_rate)
        for k, p in zip(free, optimizer.params, strict=True):
            params[k] = p
    return params
