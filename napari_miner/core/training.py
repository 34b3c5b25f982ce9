"""The training of one level (or one tile of a level): the unit that the fit engine runs.

The coarsest level fits the area-downsampled signal; every finer level fits the residual between its
target and the ×2 upsampled estimate of the level below (the coarse-to-fine loop over levels and tiles
is :mod:`napari_miner.fitting`). Within a level every block has its own MLP:

* pruning before training: blocks whose residual energy is at most the level's threshold get none
  (:func:`prune_threshold`, decided once over the whole level);
* each block's residual is standardised while it trains (per-channel mean removed, divided by its
  RMS; both folded back into the last layer when the block is stored), so one learning rate suits
  blocks of any amplitude and offset;
* pruning at convergence: every ``check_every`` steps the exact MSE of each block is evaluated and
  blocks below ``retire_mse`` retire: their weights are stored and dropped, with their Adam moments,
  from the optimised tensors;
* a level ends when all its blocks retired, its MSE plateaus, or at ``max_steps``; level 0 also ends
  once it reaches ``target_psnr`` (or ``target_iou`` for occupancy).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .adam import CompactAdam
from .blocks import BlockGrid
from .config import MinerConfig
from .errors import TrainingError
from .events import Progress
from .metrics import psnr_from_mse
from .mlp_bank import bank_forward_chunked, bank_sse_and_grads, init_bank, lr_multipliers
from .model import LevelParams


class LevelTraining:
    """The training of one level (or one tile of a level) on ``target - base``.

    Prunes blocks before training, then optimises the remaining blocks' MLPs with retirement at
    convergence and the level's stopping rules (see the module docstring). The result is
    :attr:`level`, filled in as blocks retire.

    Parameters
    ----------
    index : int
        Pyramid level being trained (its MLP width and learning rate depend on it).
    target, base : torch.Tensor
        ``(C, *spatial)`` target of the region and the upsampled coarser estimate over it; the
        region must start on a block boundary of the level.
    config : MinerConfig
        Training settings.
    generator : torch.Generator
        Source of the initial weights (and pixel samples).
    coords : torch.Tensor
        Local block coordinates (:func:`~napari_miner.core.blocks.local_coordinates`) on the device.
    chunk : int
        Blocks per chunk of the hand-written backward pass.
    clock : callable
        Returns the elapsed training time reported in progress events.
    threshold : float
        Train exactly the blocks whose residual energy exceeds this (the level's
        :func:`prune_threshold`, chosen over the whole level).
    """

    def __init__(
        self,
        index: int,
        target: torch.Tensor,
        base: torch.Tensor,
        config: MinerConfig,
        generator: torch.Generator,
        coords: torch.Tensor,
        chunk: int,
        clock: Callable[[], float],
        threshold: float,
    ) -> None:
        cfg = config
        self.index = index
        self.config = config
        self._coords = coords
        self._chunk = chunk
        self._clock = clock
        self._target, self._base = target, base
        self._generator = generator
        device = target.device
        residual = target - base
        grid = BlockGrid(tuple(residual.shape[1:]), cfg.block_size)
        blocks = grid.unfold(residual)
        mask = grid.valid_mask(device)
        n_channels = blocks.shape[1]
        counts = mask.sum(dim=(1, 2)) * n_channels
        energy = block_energy(blocks, mask)
        block_ids = torch.nonzero(energy > threshold).flatten()
        n = block_ids.numel()
        weights, biases = init_bank(
            n, grid.ndim, cfg.width_at(index), cfg.hidden_layers, n_channels, cfg.omega_0,
            generator, device,
        )  # fmt: skip
        self.level = LevelParams(
            grid, block_ids, weights, biases, {"n_blocks": grid.n_blocks, "n_mlps": n}
        )
        self._grid, self._blocks, self._mask = grid, blocks, mask
        self._counts, self._energy, self._n_channels = counts, energy, n_channels
        self.rows = torch.arange(n, device=device)  # bank rows still optimised
        self._optimizer: CompactAdam | None = None
        self._norm: _Standardization | None = None
        self.steps = 0
        self.ended = "not started"
        """Why training stopped: ``"target"`` (level 0 reached the target PSNR or IoU),
        ``"plateau"``, ``"max_steps"``, ``"retired"`` (every block converged) or ``"pruned"``
        (no block needed an MLP)."""

    @property
    def n_active(self) -> int:
        """Blocks that got an MLP."""
        return self.level.n_mlps

    def snapshot(self) -> LevelParams:
        """Copy of :attr:`level` whose still-optimised blocks hold their current weights."""
        level = self.level
        copy = LevelParams(
            level.grid,
            level.block_ids,
            [w.clone() for w in level.weights],
            [b.clone() for b in level.biases],
            dict(level.stats),
        )
        if self._optimizer is not None and self._norm is not None and self.rows.numel():
            _store(
                copy,
                self._optimizer,
                self.rows,
                self._norm,
                torch.ones_like(self.rows, dtype=torch.bool),
            )
        return copy

    def run(self) -> Iterator[Progress]:
        """Train; yields :class:`Progress` events. :attr:`ended` then says why it stopped."""
        cfg = self.config
        j = self.index
        grid, blocks, mask = self._grid, self._blocks, self._mask
        counts, energy, n_channels = self._counts, self._energy, self._n_channels
        level = self.level
        block_ids = level.block_ids
        n = block_ids.numel()
        if n == 0:
            level.stats["steps"] = 0
            self.ended = "pruned"
            return

        # each block's residual is standardised (mean removed per channel, divided by its RMS) while
        # it trains; both are folded back into the last layer when the block is stored
        chosen, chosen_mask = blocks[block_ids], mask[block_ids]
        offset = (chosen * chosen_mask).sum(dim=2) / chosen_mask.sum(dim=2)
        centered = chosen - offset[:, :, None]
        spread = ((centered.square() * chosen_mask).sum(dim=(1, 2)) / counts[block_ids]).sqrt()
        scale = spread.clamp_min(1e-6)
        norm = _Standardization(scale, offset)
        block_mse = energy.clone()  # pruned blocks keep their residual energy as error
        total_count = counts.sum()
        rows = self.rows
        # the still-optimised blocks' targets (divided by their RMS), masks and scales, compacted
        goals = centered / scale[:, None, None]
        masks = None if bool(mask.all()) else mask[block_ids]
        scales_sq = scale.square()
        occupancy = None
        if cfg.iou_threshold is not None:
            occupancy = _OccupancyCounts(
                grid.unfold(self._base),
                grid.unfold(self._target),
                mask,
                cfg.iou_threshold,
                block_ids,
            )
        level_iou = None if occupancy is None else occupancy.iou
        weights, biases = level.weights, level.biases
        n_layers = len(weights)
        optimizer = CompactAdam(weights + biases, lr_multipliers(n_layers, cfg.omega_0) * 2)
        self._optimizer, self._norm = optimizer, norm
        base_lr = cfg.learning_rate_at(j)
        plateau = cfg.final_plateau_rel_tol if j == 0 else cfg.plateau_rel_tol
        pixels = grid.block_pixels
        n_sample = max(1, round(cfg.pixel_fraction * pixels))
        generator = self._generator
        previous_mse: float | None = None
        step = 0
        self.ended = "max_steps"
        while step < cfg.max_steps and rows.numel():
            coords, goal, weight = self._coords, goals, masks
            if n_sample < pixels:
                pick = torch.randperm(pixels, generator=generator)[:n_sample].sort().values
                pick = pick.to(coords.device)
                coords, goal = coords[:, pick], goal[:, :, pick]
                weight = None if weight is None else weight[:, :, pick]
            params = optimizer.params
            sse, grad_w, grad_b = bank_sse_and_grads(
                params[:n_layers], params[n_layers:], coords, goal, weight, self._chunk
            )
            optimizer.step(grad_w + grad_b, base_lr * cfg.lr_decay**step)
            step += 1
            self.steps = step

            if step % cfg.progress_every == 0:
                # the step's own (sampled, pre-update) block errors: cheap, and close enough to report
                seen = coords.shape[1] if weight is None else weight.sum(dim=(1, 2)).clamp_min(1)
                block_mse[block_ids[rows]] = sse / (seen * n_channels) * scales_sq
                level_mse = float((block_mse * counts).sum() / total_count)
                if not math.isfinite(level_mse):
                    raise self._diverged()
                yield Progress(
                    j,
                    step,
                    level_mse,
                    psnr_from_mse(level_mse),
                    int(rows.numel()),
                    self._clock(),
                    grid.mask(block_ids[rows]),
                    level_iou,
                )
            if step % cfg.check_every and step != cfg.max_steps:
                continue
            exact, prediction = _exact_mse(optimizer, goals, masks, n_channels, self._coords)
            exact = exact * scales_sq
            if not bool(torch.isfinite(exact).all()):
                raise self._diverged()
            block_mse[block_ids[rows]] = exact
            if occupancy is not None:
                occupancy.update(rows, prediction * scale[rows, None, None] + offset[rows, :, None])
                level_iou = occupancy.iou
            level_mse = float((block_mse * counts).sum() / total_count)
            retire = exact < cfg.retire_mse
            if bool(retire.any()):
                _store(level, optimizer, rows, norm, retire)
                keep = torch.nonzero(~retire).flatten()
                optimizer.keep(keep)
                rows, goals, scales_sq = rows[keep], goals[keep], scales_sq[keep]
                masks = None if masks is None else masks[keep]
                self.rows = rows
            if j == 0 and (
                psnr_from_mse(level_mse) >= cfg.target_psnr
                or (
                    cfg.target_iou is not None
                    and level_iou is not None
                    and level_iou >= cfg.target_iou
                )
            ):
                self.ended = "target"
                break
            if previous_mse is not None and previous_mse - level_mse < plateau * previous_mse:
                self.ended = "plateau"
                break
            previous_mse = level_mse
        if rows.numel():
            _store(level, optimizer, rows, norm, torch.ones_like(rows, dtype=torch.bool))
        elif self.ended == "max_steps" and step < cfg.max_steps:
            self.ended = "retired"
        self.rows = rows[:0]
        level.stats["steps"] = step

    def _diverged(self) -> TrainingError:
        cfg = self.config
        return TrainingError(
            f"training diverged at level {self.index} (non-finite error): lower learning_rate "
            f"(now {cfg.learning_rate}) or omega_0 (now {cfg.omega_0})"
        )

    def result(self) -> TileResult:
        """The trained tile: its MLPs and the level's estimate over it (after :meth:`run`)."""
        params = self.level
        target = self._target
        residual = torch.zeros_like(target)
        if params.n_mlps:
            grid = params.grid
            values = torch.zeros(
                (grid.n_blocks, target.shape[0], grid.block_pixels), device=target.device
            )
            values[params.block_ids] = bank_forward_chunked(
                params.weights, params.biases, self._coords
            )
            residual = grid.fold(values)
        return TileResult(params.to("cpu"), self._base + residual, self.steps, self.ended)


def _exact_mse(
    optimizer: CompactAdam,
    goals: torch.Tensor,
    masks: torch.Tensor | None,
    n_channels: int,
    coords: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact MSE of every optimised block on its real pixels, and the blocks' outputs.

    Both are in the blocks' standardised units.
    """
    n_layers = len(optimizer.params) // 2
    params = optimizer.params
    out = bank_forward_chunked(params[:n_layers], params[n_layers:], coords)
    sq = (out - goals).square()
    if masks is None:
        return sq.mean(dim=(1, 2)), out
    return (sq * masks).sum(dim=(1, 2)) / (masks.sum(dim=(1, 2)) * n_channels), out


def _store(
    level: LevelParams,
    optimizer: CompactAdam,
    rows: torch.Tensor,
    norm: _Standardization,
    which: torch.Tensor,
) -> None:
    """Write the selected optimised blocks, standardisation folded in, into the level's bank."""
    n_layers = len(level.weights)
    params = optimizer.params
    target_rows = rows[which]
    scale = norm.scale[target_rows][:, None, None]
    for layer in range(n_layers):
        w, b = params[layer][which], params[n_layers + layer][which]
        if layer == n_layers - 1:
            w, b = w * scale, b * scale + norm.offset[target_rows][:, :, None]
        level.weights[layer][target_rows] = w
        level.biases[layer][target_rows] = b


class _OccupancyCounts:
    """Per-block intersection and union of the occupied sets of the estimate and the target.

    Blocks without an MLP keep the counts of the coarser estimate; trained blocks are updated
    from their exact predictions at every convergence check. Level IoU = sum(inter) / sum(union).
    """

    def __init__(
        self,
        base_blocks: torch.Tensor,
        target_blocks: torch.Tensor,
        mask: torch.Tensor,
        threshold: float,
        block_ids: torch.Tensor,
    ) -> None:
        self.threshold = threshold
        valid = mask > 0
        occupied = (target_blocks >= threshold) & valid
        estimated = (base_blocks >= threshold) & valid
        self.intersection = (occupied & estimated).sum(dim=(1, 2)).double()
        self.union = (occupied | estimated).sum(dim=(1, 2)).double()
        self._ids = block_ids
        self._base = base_blocks[block_ids]
        self._occupied = occupied[block_ids]
        self._valid = valid[block_ids]

    def update(self, rows: torch.Tensor, prediction: torch.Tensor) -> None:
        """Recount the blocks at bank ``rows`` given their predicted residuals."""
        estimated = ((self._base[rows] + prediction) >= self.threshold) & self._valid[rows]
        occupied = self._occupied[rows]
        self.intersection[self._ids[rows]] = (occupied & estimated).sum(dim=(1, 2)).double()
        self.union[self._ids[rows]] = (occupied | estimated).sum(dim=(1, 2)).double()

    @property
    def iou(self) -> float:
        """IoU of the level (1 when both sets are empty)."""
        union = float(self.union.sum())
        return 1.0 if union == 0 else float(self.intersection.sum()) / union


@dataclass(frozen=True)
class _Standardization:
    """Per-block ``scale`` (n,) and per-block, per-channel ``offset`` (n, C) of the training targets."""

    scale: torch.Tensor
    offset: torch.Tensor


def tile_seed(seed: int, level: int, index: Sequence[int]) -> int:
    """Seed of the initial weights of a tile (a whole level is tile ``(0, ...)``).

    A hash of the fit's seed, the level and the tile's position, so that what a tile learns does
    not depend on the order in which tiles are trained.
    """
    text = f"{seed}/{level}/{'.'.join(str(int(i)) for i in index)}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def block_energy(blocks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean square of every block's residual over its real pixels and all channels.

    ``blocks`` is ``(n, C, pixels)``, ``mask`` the ``(n, 1, pixels)`` valid-pixel mask.
    """
    counts = mask.sum(dim=(1, 2)) * blocks.shape[1]
    return (blocks.square() * mask).sum(dim=(1, 2)) / counts


def residual_energies(
    target: torch.Tensor, base: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual energy and value count of every block of a region, shaped like its block grid.

    The energies of all tiles of a level give the level's :func:`prune_threshold`.
    """
    grid = BlockGrid(tuple(target.shape[1:]), block_size)
    mask = grid.valid_mask(target.device)
    energy = block_energy(grid.unfold(target - base), mask)
    counts = mask.sum(dim=(1, 2)) * target.shape[0]
    return energy.reshape(grid.grid_shape), counts.reshape(grid.grid_shape)


def prune_threshold(energy: torch.Tensor, counts: torch.Tensor, config: MinerConfig) -> float:
    """The residual energy above which a block of a level gets an MLP (pruning before training).

    With ``config.prune_mse`` set, that value. Otherwise the lowest-energy blocks are pruned for as
    long as their summed squared residual stays within ``prune_budget`` of the level's error
    allowance (``10**(-target_psnr/10)`` per value), so the pruned blocks cost at most that
    fraction of the target error; blocks of equal energy are pruned or trained together.

    Parameters
    ----------
    energy, counts : torch.Tensor
        Every block's residual energy (mean square) and value count, over the whole level.
    config : MinerConfig
        Training settings.
    """
    if config.prune_mse is not None:
        return float(config.prune_mse)
    energy, counts = energy.reshape(-1).double().cpu(), counts.reshape(-1).double().cpu()
    allowance = config.prune_budget * 10.0 ** (-config.target_psnr / 10.0) * float(counts.sum())
    order = torch.argsort(energy)
    ordered = energy[order]
    spent = torch.cumsum((energy * counts)[order], dim=0)
    n_pruned = int(torch.searchsorted(spent, spent.new_tensor([allowance]), right=True))
    if n_pruned == 0:
        return float("-inf")
    threshold = ordered[n_pruned - 1]
    if n_pruned < ordered.numel() and bool(ordered[n_pruned] == threshold):
        below = ordered[:n_pruned][ordered[:n_pruned] < threshold]  # a tie across the cut:
        return float(below.max()) if below.numel() else float("-inf")  # train all tied blocks
    return float(threshold)


@dataclass(eq=False)
class TileResult:
    """A trained tile (or level).

    Attributes
    ----------
    level : LevelParams
        The tile's MLPs on the CPU, on a block grid of the tile's own shape.
    estimate : torch.Tensor
        The level's estimate over the tile (coarser estimate plus the tile's residual),
        ``(C, *tile shape)`` on the training device: what the next finer level upsamples.
    steps : int
        Optimisation steps taken.
    ended : str
        Why training stopped (see :attr:`LevelTraining.ended`).
    """

    level: LevelParams
    estimate: torch.Tensor
    steps: int
    ended: str
