"""The training of one level (or one tile of a level): the unit that the fit engine runs.

The coarsest level fits the area-downsampled signal; every finer level fits the residual between its
target and the ×2 upsampled estimate of the level below (the coarse-to-fine loop over levels and tiles
is :mod:`napari_miner.fitting`). Within a level:

1. **Pruning before training**: blocks whose residual energy is at most the level's threshold get no
   MLP (:func:`prune_threshold`, decided once over the whole level).
2. **The main and lite banks** train, one MLP per remaining block; blocks whose residual is small
   get the lite bank's narrower MLPs (:class:`~napari_miner.core.bank_fit.BankFit`: standardised
   residuals, retirement of converged blocks, plateau, ``max_steps``, target).
3. **Quantisation**: each bank's weights are rounded to ``weight_bits`` bits, fine-tuned layer by
   layer when rounding costs more than ``qat_budget_db`` (:mod:`napari_miner.core.quantize`); then
   level 0 drops the MLPs its target can spare (:mod:`napari_miner.core.capacity`).
4. **Capacity where the error is** (level 0, while it is below its target): the blocks still above
   their share of the error (the target's MSE) are split into ``2**d`` children of half the side,
   each with an MLP of its own that learns what is left (a *split* bank, itself trained and
   quantised the same way), up to ``max_splits`` times (:mod:`napari_miner.core.banks`).

:attr:`LevelTraining.ended` says why the level stopped: ``"target"`` (level 0 reached the target
PSNR or IoU), or, when it did not, the reason its last bank ended: ``"plateau"``, ``"max_steps"``,
``"retired"`` (every block converged), ``"pruned"`` (no block needed an MLP) or ``"quantization"``
(a bank reached it, then rounding its weights cost more than the budget kept in hand).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .bank_fit import BankFit, bank_mse, fine_tune_quantized
from .banks import level_banks
from .block_state import BlockReport, BlockTracker
from .blocks import BlockGrid, local_coordinates
from .capacity import TRIM_MARGIN_DB, children_of, keep_rows, spared_mlps, worst_blocks
from .config import REFERENCE_WIDTH, MinerConfig
from .errors import TrainingError
from .events import Progress
from .metrics import psnr_from_mse
from .mlp_bank import bank_forward_chunked, init_bank
from .model import LevelParams


class LevelTraining:
    """The training of one level (or one tile of a level) on ``target - base``.

    See the module docstring for the phases. The result is :attr:`level` (the main bank, with the
    split banks in ``level.extra``), filled in as blocks retire, and :meth:`result`.

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
        self.index, self.config = index, config
        self._coords, self._chunk, self._clock = coords, chunk, clock
        self._target, self._base = target, base
        self._generator = generator
        device = target.device
        grid = BlockGrid(tuple(target.shape[1:]), config.block_size)
        blocks = grid.unfold(target - base)
        mask = grid.valid_mask(device)
        n_channels = blocks.shape[1]
        self._counts = mask.sum(dim=(1, 2)) * n_channels
        energy = block_energy(blocks, mask)
        trained = energy > threshold
        self._specs = level_banks(config, index)
        names = [spec.name for spec in self._specs]
        lite = torch.zeros_like(trained)
        if "lite" in names:
            lite = trained & (energy <= config.lite_energy * 10.0 ** (-config.target_psnr / 10.0))
        chosen = {
            "main": torch.nonzero(trained & ~lite).flatten(),
            "lite": torch.nonzero(lite).flatten(),
        }
        banks = []
        self._tracker = BlockTracker(grid, trained)
        for spec in self._specs:
            ids = chosen.get(spec.name, torch.zeros(0, dtype=torch.long, device=device))
            self._tracker.assign(ids, spec.params_per_mlp(grid.ndim, n_channels))
            bank_grid = spec.grid(grid.shape)
            weights, biases = init_bank(
                ids.numel(), grid.ndim, spec.width, spec.hidden_layers, n_channels,
                config.omega_0, generator, device,
            )  # fmt: skip
            banks.append(LevelParams(bank_grid, ids, weights, biases))
        stats = {"n_blocks": grid.n_blocks, "n_mlps": int(trained.sum())}
        self.level = banks[0]
        self.level.stats, self.level.extra = stats, tuple(banks[1:])
        self._grid, self._blocks, self._mask = grid, blocks, mask
        self._energy = energy
        self._block_mse = energy.clone()  # pruned blocks keep their residual energy as error
        self._occupancy = None
        if config.iou_threshold is not None:
            self._occupancy = _OccupancyCounts(
                grid.unfold(base), grid.unfold(target), mask, config.iou_threshold
            )
        self._fit: BankFit | None = None
        self._bank = 0  # the bank being trained (index into level_banks)
        self._begun: set[int] = set()  # the banks whose training has begun
        self._split_level_mse: Callable[[], float] | None = None
        self.steps = 0
        self.ended = "not started"
        """Why training stopped (see the module docstring)."""
        self.error_floor = 0.0
        """Mean squared error that decoding adds (rounding to the input's dtype), in normalised
        units: level 0 counts as reaching its target only with it."""

    # ------------------------------------------------------------------------- reading
    @property
    def banks(self) -> tuple[LevelParams, ...]:
        """Every bank of the level, in the order of :func:`~napari_miner.core.banks.level_banks`."""
        return (self.level, *self.level.extra)

    @property
    def n_active(self) -> int:
        """Blocks of the level's own grid that got an MLP (main and lite banks)."""
        return int(self.level.stats["n_mlps"])

    @property
    def rows(self) -> torch.Tensor:
        """Rows of the bank being trained that are still optimised."""
        return self._fit.rows if self._fit is not None else self.level.block_ids[:0]

    def snapshot(self) -> LevelParams:
        """Copy of :attr:`level` whose still-optimised blocks hold their current weights.

        Banks whose training has not begun yet are left out (their MLPs are still random).
        """
        copy = self.level.to(self.level.block_ids.device)
        banks = (copy, *copy.extra)
        if self._fit is not None:
            self._fit.store_current(banks[self._bank])
        for k, bank in enumerate(banks):
            if k not in self._begun:
                keep_rows(bank, torch.zeros_like(bank.block_ids, dtype=torch.bool))
        return copy

    def block_report(self) -> BlockReport:
        """Every block of the level (tile) now: its state, error and parameters."""
        return self._tracker.report(self._block_mse, self._counts)

    def _level_mse(self) -> float:
        if self._split_level_mse is not None:
            return self._split_level_mse()
        return float((self._block_mse * self._counts).sum() / self._counts.sum())

    def _reached(self, mse: float, margin: float = 0.0) -> bool:
        """Whether level 0 reached its target, with the decoder's error floor added to ``mse``.

        ``margin`` (dB) is what is still to be lost (to quantising the bank in training).
        """
        cfg = self.config
        if self.index != 0:
            return False
        if psnr_from_mse(mse + self.error_floor) >= cfg.target_psnr + margin:
            return True
        iou = None if self._occupancy is None else self._occupancy.iou
        return cfg.target_iou is not None and iou is not None and iou >= cfg.target_iou

    def _reached_before_quantizing(self, mse: float) -> bool:
        """:meth:`_reached`, keeping the quantisation budget in hand when weights get quantised."""
        cfg = self.config
        return self._reached(mse, cfg.qat_budget_db if cfg.weight_bits is not None else 0.0)

    def _diverged(self) -> TrainingError:
        cfg = self.config
        return TrainingError(
            f"training diverged at level {self.index} (non-finite error): lower learning_rate "
            f"(now {cfg.learning_rate}) or omega_0 (now {cfg.omega_0})"
        )

    # ------------------------------------------------------------------------ training
    def run(self) -> Iterator[Progress]:
        """Train; yields :class:`Progress` events. :attr:`ended` then says why it stopped."""
        self.ended = "pruned"
        on_grid = [k for k, spec in enumerate(self._specs) if not spec.name.startswith("split")]
        for k in on_grid:
            if self.banks[k].block_ids.numel():
                yield from self._train_bank(k)
        if self.config.weight_bits is not None:
            for k in on_grid:
                self._quantize_bank(k)
        self._trim_on_grid(on_grid)
        for k, spec in enumerate(self._specs):
            if not spec.name.startswith("split"):
                continue
            if self._reached(self._level_mse()):
                break
            yield from self._grow(k, int(spec.name.removeprefix("split")))
        if self._reached(self._level_mse()):
            self.ended = "target"
        elif self.ended == "target":  # a bank reached it, then lost it to the rounding of weights
            self.ended = "quantization"
        self._fit = None
        self.level.stats["steps"] = self.steps

    def _bank_blocks(self, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = self.banks[k].block_ids
        return self._blocks[ids], None if bool(self._mask.all()) else self._mask[ids]

    def _train_bank(self, k: int) -> Iterator[Progress]:
        """Train bank ``k`` of the level's own grid (main or lite)."""
        cfg, grid, bank, spec = self.config, self._grid, self.banks[k], self._specs[k]
        ids = bank.block_ids
        blocks, masks = self._bank_blocks(k)
        plateau = cfg.final_plateau_rel_tol if self.index == 0 else cfg.plateau_rel_tol
        learning_rate = cfg.learning_rate_at(self.index)
        if spec.name != "main":
            learning_rate = cfg.learning_rate * math.sqrt(REFERENCE_WIDTH / spec.width)
        fit = BankFit(
            bank, blocks, masks, self._coords, cfg, learning_rate, plateau, self._chunk,
            self._generator,
        )  # fmt: skip
        self._fit, self._bank = fit, k
        self._begun.add(k)
        self._tracker.start(ids)
        done = self.steps

        def report(rows: torch.Tensor, mse: torch.Tensor, prediction: torch.Tensor | None) -> None:
            self._block_mse[ids[rows]] = mse
            if prediction is not None:  # an exact check: the blocks below retire_mse retire
                self._tracker.retire(ids[rows[mse < cfg.retire_mse]])
            if prediction is not None and self._occupancy is not None:
                self._occupancy.update(ids[rows], prediction)

        def progress(step: int, mse: float) -> Progress:
            iou = None if self._occupancy is None else self._occupancy.iou
            return Progress(
                self.index, done + step, mse, psnr_from_mse(mse), int(fit.rows.numel()),
                self._clock(), grid.mask(ids[fit.rows]), iou, blocks=self.block_report(),
            )  # fmt: skip

        yield from fit.run(
            report, self._level_mse, self._reached_before_quantizing, progress, self._diverged
        )
        self.steps, self.ended = done + fit.steps, fit.ended
        self._tracker.end(ids)

    def _quantize_bank(self, k: int) -> None:
        """Round bank ``k`` of the level's own grid to ``weight_bits`` (fine-tuned if needed)."""
        bank = self.banks[k]
        ids = bank.block_ids
        if not ids.numel():
            bank.bits = self.config.weight_bits
            return
        blocks, masks = self._bank_blocks(k)
        counts = self._counts[ids]
        others = float((self._block_mse * self._counts).sum()) - float(
            (self._block_mse[ids].double() * counts.double()).sum()
        )
        total = float(self._counts.sum())
        self._block_mse[ids] = self._quantized_mse(
            bank, blocks, masks, self._coords, counts, others, total
        )

    def _quantized_mse(
        self,
        bank: LevelParams,
        blocks: torch.Tensor,
        masks: torch.Tensor | None,
        coords: torch.Tensor,
        counts: torch.Tensor,
        others: float,
        total: float,
    ) -> torch.Tensor:
        """Quantise ``bank`` (fine-tuned if needed); returns its blocks' MSE after it.

        What rounding costs is measured on the level's PSNR: its squared error is ``others`` plus
        that of the bank's blocks (``counts`` values each), over ``total`` values.
        """
        float_mse, _ = bank_mse(bank.weights, bank.biases, coords, blocks, masks)
        float_sse = float((float_mse.double() * counts.double()).sum())
        reference = psnr_from_mse((others + float_sse) / total)

        def cost(sse: torch.Tensor) -> float:
            return reference - psnr_from_mse((others + float(sse.double().sum())) / total)

        fine_tune_quantized(
            bank, blocks, masks, coords, self.config.weight_bits, cost,
            self.config.qat_budget_db, self._chunk,
        )  # fmt: skip
        quantized, _ = bank_mse(bank.weights, bank.biases, coords, blocks, masks)
        return quantized

    def _spare_sse(self, total: float) -> float | None:
        """The squared error level 0 may still add and stay at its target (``None``: no trimming).

        Only a PSNR target is traded for parameters (an IoU target is left alone), with a margin
        of :data:`TRIM_MARGIN_DB` for the rounding of decoded values.
        """
        cfg = self.config
        if self.index != 0 or cfg.target_iou is not None:
            return None
        allowed = 10.0 ** (-(cfg.target_psnr + TRIM_MARGIN_DB) / 10.0) - self.error_floor
        return allowed * total

    def _trim_on_grid(self, on_grid: list[int]) -> None:
        """Drop the main and lite MLPs of level 0 that its target can spare (see :func:`~napari_miner.core.capacity.spared_mlps`)."""
        total = float(self._counts.sum())
        spare = self._spare_sse(total)
        if spare is None:
            return
        ids = torch.cat([self.banks[k].block_ids for k in on_grid])
        if not ids.numel():
            return
        counts = self._counts[ids].double()
        gains = (self._energy[ids].double() - self._block_mse[ids].double()) * counts
        level_sse = float((self._block_mse.double() * self._counts).sum())
        dropped = spared_mlps(gains, spare - level_sse)
        if not bool(dropped.any()):
            return
        self._block_mse[ids[dropped]] = self._energy[ids[dropped]]
        self._tracker.drop(ids[dropped])
        start = 0
        for k in on_grid:
            bank = self.banks[k]
            n = bank.block_ids.numel()
            keep_rows(bank, ~dropped[start : start + n])
            start += n
        self.level.stats["n_mlps"] -= int(dropped.sum())

    def _grow(self, k: int, split: int) -> Iterator[Progress]:
        """Split the blocks still above the target's MSE and train the children's bank ``k``."""
        cfg, bank, spec = self.config, self.banks[k], self._specs[k]
        grid = bank.grid
        residual = self._target - self._estimate()
        parent = BlockGrid(grid.shape, cfg.block_size >> (split - 1))
        parent_mask = parent.valid_mask(residual.device)
        parent_counts = parent_mask.sum(dim=(1, 2)) * residual.shape[0]
        parent_energy = block_energy(parent.unfold(residual), parent_mask)
        chosen = parent.mask(worst_blocks(parent_energy, parent_counts, cfg).cpu())
        children = children_of(chosen, grid).to(residual.device)
        blocks, mask = grid.unfold(residual), grid.valid_mask(residual.device)
        counts = mask.sum(dim=(1, 2)) * residual.shape[0]
        energy = block_energy(blocks, mask)
        ids = children[energy[children] > cfg.retire_mse]
        if not ids.numel():
            return
        weights, biases = init_bank(
            ids.numel(), grid.ndim, spec.width, spec.hidden_layers, residual.shape[0],
            cfg.omega_0, self._generator, residual.device,
        )  # fmt: skip
        bank.block_ids, bank.weights, bank.biases = ids, weights, biases
        params_per_mlp = spec.params_per_mlp(grid.ndim, residual.shape[0])
        self._tracker.grow(split, ids, grid, params_per_mlp)
        parents = torch.arange(parent.n_blocks, device=residual.device)
        level_sse = self._tracker.level_sum(parent_energy * parent_counts, parents, parent)
        coords = local_coordinates(grid.block_size, grid.ndim, residual.device)
        masks = None if bool(mask[ids].all()) else mask[ids]
        start_sse = float((parent_energy * parent_counts).sum())
        child_sse = energy[ids] * counts[ids]
        total = float(parent_counts.sum())
        initial = float(child_sse.sum())
        learning_rate = cfg.learning_rate * math.sqrt(REFERENCE_WIDTH / spec.width)
        fit = BankFit(
            bank, blocks[ids], masks, coords, cfg, learning_rate, cfg.final_plateau_rel_tol,
            self._chunk, self._generator,
        )  # fmt: skip
        self._fit, self._bank = fit, k
        self._begun.add(k)
        done = self.steps

        def report(rows: torch.Tensor, mse: torch.Tensor, prediction: torch.Tensor | None) -> None:
            child_sse[rows] = mse * counts[ids[rows]]

        def level_mse() -> float:
            return (start_sse - initial + float(child_sse.sum())) / total

        factor = 1 << split

        def report_blocks() -> BlockReport:  # the level's blocks, with the children's errors
            gains = child_sse - energy[ids] * counts[ids]
            self._tracker.growing(level_sse + self._tracker.level_sum(gains, ids, grid))
            return self.block_report()

        def progress(step: int, mse: float) -> Progress:
            training = grid.mask(ids[fit.rows])
            index = torch.nonzero(torch.from_numpy(training))
            active = torch.zeros(self._grid.grid_shape, dtype=torch.bool)
            if index.numel():
                active[tuple((index // factor).T)] = True
            return Progress(
                self.index, done + step, mse, psnr_from_mse(mse), int(fit.rows.numel()),
                self._clock(), active.numpy(), None, blocks=report_blocks(),
            )  # fmt: skip

        self._split_level_mse = level_mse
        yield from fit.run(
            report, level_mse, self._reached_before_quantizing, progress, self._diverged
        )
        self.steps, self.ended = done + fit.steps, fit.ended
        if cfg.weight_bits is not None:
            quantized = self._quantized_mse(
                bank, blocks[ids], masks, coords, counts[ids], start_sse - initial, total
            )
            child_sse[:] = quantized * counts[ids]
        spare = self._spare_sse(total)
        if spare is not None:
            gains = (energy[ids] * counts[ids]).double() - child_sse.double()
            dropped = spared_mlps(gains, spare - total * level_mse())
            keep_rows(bank, ~dropped)
            child_sse[dropped] = (energy[ids] * counts[ids])[dropped]
            self._tracker.grow(split, bank.block_ids, grid, params_per_mlp)
        report_blocks()
        self.level.stats[f"n_split{split}"] = int(bank.block_ids.numel())

    # -------------------------------------------------------------------------- result
    def _estimate(self) -> torch.Tensor:
        """The level's estimate over the tile from every bank trained so far."""
        estimate = self._base.clone()
        for bank in (self.level, *self.level.extra):
            if not bank.block_ids.numel():
                continue
            grid = bank.grid
            coords = local_coordinates(grid.block_size, grid.ndim, estimate.device)
            values = torch.zeros(
                (grid.n_blocks, estimate.shape[0], grid.block_pixels), device=estimate.device
            )
            values[bank.block_ids] = bank_forward_chunked(bank.weights, bank.biases, coords)
            estimate += grid.fold(values)
        return estimate

    def result(self) -> TileResult:
        """The trained tile: its MLPs and the level's estimate over it (after :meth:`run`)."""
        return TileResult(self.level.to("cpu"), self._estimate(), self.steps, self.ended)


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
    ) -> None:
        self.threshold = threshold
        self._valid = mask > 0
        self._occupied = (target_blocks >= threshold) & self._valid
        self._base = base_blocks
        estimated = (base_blocks >= threshold) & self._valid
        self.intersection = (self._occupied & estimated).sum(dim=(1, 2)).double()
        self.union = (self._occupied | estimated).sum(dim=(1, 2)).double()

    def update(self, ids: torch.Tensor, prediction: torch.Tensor) -> None:
        """Recount the blocks ``ids`` given their predicted residuals."""
        estimated = ((self._base[ids] + prediction) >= self.threshold) & self._valid[ids]
        occupied = self._occupied[ids]
        self.intersection[ids] = (occupied & estimated).sum(dim=(1, 2)).double()
        self.union[ids] = (occupied | estimated).sum(dim=(1, 2)).double()

    @property
    def iou(self) -> float:
        """IoU of the level (1 when both sets are empty)."""
        union = float(self.union.sum())
        return 1.0 if union == 0 else float(self.intersection.sum()) / union


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
