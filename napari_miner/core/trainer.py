"""Coarse-to-fine MINER training.

The coarsest level fits the area-downsampled signal; every finer level fits the residual between its
target and the ×2 upsampled estimate of the level below. Within a level every block has its own MLP:

* pruning before training: the lowest-energy blocks get none (see :func:`blocks_to_train`);
* each block's residual is standardised while it trains (per-channel mean removed, divided by its
  RMS; both folded back into the last layer when the block is stored), so one learning rate suits
  blocks of any amplitude and offset;
* pruning at convergence: every ``check_every`` steps the exact MSE of each block is evaluated and
  blocks below ``retire_mse`` retire: their weights are stored and dropped, with their Adam moments,
  from the optimised tensors;
* a level ends when all its blocks retired, its MSE plateaus, or at ``max_steps``; the fit ends early
  once the full-resolution reconstruction reaches ``target_psnr`` (or ``target_iou`` for occupancy).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .adam import CompactAdam
from .blocks import BlockGrid, local_coordinates
from .config import MinerConfig
from .errors import TrainingError
from .events import Event, Finished, Progress, ScaleFinished, ScaleStarted
from .layout import InputLayout
from .metrics import iou_of, psnr_from_mse
from .mlp_bank import bank_forward_chunked, bank_sse_and_grads, init_bank, lr_multipliers
from .model import LevelParams, PyramidModel, empty_levels
from .pyramid import gaussian_targets, upsample


class Stopwatch:
    """Accumulates time while running; paused while the consumer holds an event.

    ``offset`` is time already spent (by an earlier run of a resumed fit).
    """

    def __init__(self, device: torch.device, offset: float = 0.0) -> None:
        self._device = device
        self._total = offset
        self._since: float | None = None

    def start(self) -> None:
        """Start (or resume) counting."""
        self._since = time.perf_counter()

    def pause(self) -> float:
        """Stop counting (after the device finished its queued work); returns the total."""
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        if self._since is not None:
            self._total += time.perf_counter() - self._since
            self._since = None
        return self._total

    @property
    def elapsed(self) -> float:
        """Total time counted so far."""
        running = 0.0 if self._since is None else time.perf_counter() - self._since
        return self._total + running


class MinerTrainer:
    """Fits a MINER model to a normalised signal, yielding progress events.

    Parameters
    ----------
    signal : torch.Tensor
        ``(C, *spatial)`` float32 values in [0, 1] (see :class:`~napari_miner.core.layout.InputLayout`).
    layout : InputLayout
        Layout of the original input, stored with the model.
    config : MinerConfig
        Training settings.
    device : torch.device
        Where to train.
    metadata : dict, optional
        Provenance stored with the model (plain JSON values).
    model_class : type of PyramidModel
        Class of the models this trainer returns.
    """

    def __init__(
        self,
        signal: torch.Tensor,
        layout: InputLayout,
        config: MinerConfig,
        device: torch.device,
        metadata: dict | None = None,
        model_class: type[PyramidModel] = PyramidModel,
    ) -> None:
        config.check_shape(layout.spatial_shape)
        self.layout = layout
        self.config = config
        self._provenance = dict(metadata or {})
        self._model_class = model_class
        self.device = device
        self.signal = signal.to(device)
        self.levels: list[LevelParams] = empty_levels(layout.spatial_shape, config, signal.shape[0])
        self._coords = local_coordinates(config.block_size, signal.ndim - 1, device)
        self._clock = Stopwatch(device)
        # blocks per chunk of the training step: cache-sized on CPUs, the whole bank on GPUs
        self._chunk = 16 if device.type == "cpu" else 1 << 20
        self._current: LevelTraining | None = None

    # ---------------------------------------------------------------------- public
    def model(self) -> PyramidModel:
        """The model as trained so far (also mid-level: active blocks at their current weights)."""
        levels = list(self.levels)
        if self._current is not None:
            levels[self._current.index] = self._current.snapshot()
        return self._model_class(self.layout, self.config, levels, self._metadata())

    @property
    def training_rows(self) -> tuple[int, torch.Tensor] | None:
        """``(level, bank rows)`` of the blocks still being optimised, or ``None`` between levels."""
        if self._current is None:
            return None
        return self._current.index, self._current.rows.clone()

    def run(self) -> Iterator[Event]:
        """Train coarse to fine; yields :mod:`~napari_miner.core.events` and ends with ``Finished``."""
        cfg = self.config
        targets = gaussian_targets(self.signal, cfg.n_levels)
        estimate: torch.Tensor | None = None
        reason = "completed"
        final_mse = math.nan
        final_iou: float | None = None
        self._clock.start()
        for j in reversed(range(cfg.n_levels)):
            target = targets[j]
            base = (
                torch.zeros_like(target)
                if estimate is None
                else upsample(estimate, target.shape[1:])
            )
            level_events = self._train_level(j, target, base)
            reached = False
            for event in level_events:
                if isinstance(event, bool):
                    reached = event
                    continue
                self._clock.pause()
                yield event
                self._clock.start()
            level = self.levels[j]
            residual = self._decode_level_residual(level, target.shape[0])
            estimate = base + residual
            final_mse = float(torch.mean((estimate - target) ** 2))
            final_iou = (
                None if cfg.iou_threshold is None else iou_of(estimate, target, cfg.iou_threshold)
            )
            level.stats["psnr"] = psnr_from_mse(final_mse)
            if final_iou is not None:
                level.stats["iou"] = final_iou
            level.stats["elapsed_s"] = self._clock.elapsed
            self._clock.pause()
            yield ScaleFinished(
                level=j,
                reconstruction=estimate.movedim(0, -1).cpu().numpy(),
                active_mask=level.active_mask(),
                psnr=level.stats["psnr"],
                elapsed_s=level.stats["elapsed_s"],
                steps=int(level.stats.get("steps", 0)),
                iou=final_iou,
            )
            self._clock.start()
            if reached:
                reason = "target"
                break
        elapsed = self._clock.pause()
        yield Finished(self.model(), psnr_from_mse(final_mse), elapsed, reason, final_iou)

    # -------------------------------------------------------------------- internals
    def _metadata(self) -> dict:
        return {**self._provenance, "train_time_s": self._clock.elapsed}

    def _decode_level_residual(self, level: LevelParams, n_channels: int) -> torch.Tensor:
        grid = level.grid
        values = torch.zeros((grid.n_blocks, n_channels, grid.block_pixels), device=self.device)
        if level.n_mlps:
            values[level.block_ids] = bank_forward_chunked(
                level.weights, level.biases, self._coords
            )
        return grid.fold(values)

    def _train_level(
        self, j: int, target: torch.Tensor, base: torch.Tensor
    ) -> Iterator[Event | bool]:
        """Train level ``j`` on ``target - base``; yields events, and ``True`` at the target."""
        # each level draws its weights from its own seed, as every tile of an out-of-core fit
        # does, so that a level trained as one tile is trained exactly as here
        seed = tile_seed(self.config.seed, j, (0,) * (target.ndim - 1))
        training = LevelTraining(
            j, target, base, self.config, torch.Generator().manual_seed(seed), self._coords,
            self._chunk, lambda: self._clock.elapsed,
        )  # fmt: skip
        self.levels[j] = training.level
        self._current = training  # a fit closed mid-level keeps the level's current weights
        yield from training.run()
        self._current = None


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
    prune_threshold : float, optional
        Train exactly the blocks whose residual energy exceeds this (a threshold chosen over a
        whole level whose tiles are trained one by one); by default pruning is decided here
        (:func:`blocks_to_train`).
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
        prune_threshold: float | None = None,
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
        if prune_threshold is None:
            block_ids = blocks_to_train(energy, counts, cfg)
        else:
            block_ids = torch.nonzero(energy > prune_threshold).flatten()
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

    def run(self) -> Iterator[Event | bool]:
        """Train; yields ``ScaleStarted`` and ``Progress`` events, and ``True`` at the target."""
        cfg = self.config
        j = self.index
        grid, blocks, mask = self._grid, self._blocks, self._mask
        counts, energy, n_channels = self._counts, self._energy, self._n_channels
        level = self.level
        block_ids = level.block_ids
        n = block_ids.numel()
        yield ScaleStarted(level=j, n_blocks=grid.n_blocks, n_active=n)
        if n == 0:
            level.stats["steps"] = 0
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
        reached = False
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
                raise TrainingError(
                    f"training diverged at level {j} (non-finite error): lower learning_rate "
                    f"(now {cfg.learning_rate}) or omega_0 (now {cfg.omega_0})"
                )
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
                reached = True
                break
            if previous_mse is not None and previous_mse - level_mse < plateau * previous_mse:
                break
            previous_mse = level_mse
        if rows.numel():
            _store(level, optimizer, rows, norm, torch.ones_like(rows, dtype=torch.bool))
        self.rows = rows[:0]
        level.stats["steps"] = step
        if reached:
            yield True


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
    """Seed of the initial weights of a tile (or a whole level, tile ``(0, ...)``).

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


def prune_threshold(energy: torch.Tensor, counts: torch.Tensor, config: MinerConfig) -> float:
    """The energy above which a block is trained: the threshold form of :func:`blocks_to_train`.

    For a level whose tiles are trained separately, computed once from all its blocks.
    """
    if config.prune_mse is not None:
        return float(config.prune_mse)
    trained = blocks_to_train(energy, counts, config)
    if trained.numel() == energy.numel():
        return float("-inf")
    pruned = torch.ones(energy.numel(), dtype=torch.bool)
    pruned[trained.cpu()] = False
    return float(energy.cpu()[pruned].max())


def blocks_to_train(
    energy: torch.Tensor, counts: torch.Tensor, config: MinerConfig
) -> torch.Tensor:
    """Indices of the blocks that get an MLP (pruning before training).

    With ``config.prune_mse`` set, blocks whose residual mean square exceeds it. Otherwise the
    lowest-energy blocks are pruned for as long as their summed squared residual stays within
    ``prune_budget`` of the level's error allowance (``10**(-target_psnr/10)`` per value): the
    pruned blocks then cost at most that fraction of the target error.
    """
    if config.prune_mse is not None:
        return torch.nonzero(energy > config.prune_mse).flatten()
    allowance = config.prune_budget * 10.0 ** (-config.target_psnr / 10.0) * float(counts.sum())
    order = torch.argsort(energy)
    spent = torch.cumsum((energy * counts)[order].double(), dim=0)
    n_pruned = int(torch.searchsorted(spent, spent.new_tensor([allowance]), right=True))
    return torch.sort(order[n_pruned:]).values
