"""What happens to every block of a level during training: its state, error and parameters.

A level's training (:class:`~napari_miner.core.training.LevelTraining`) keeps a
:class:`BlockTracker` that follows each block of the level's grid through the phases of
:mod:`~napari_miner.core.training`: pruned before training (or dropped after it, when level 0's
target can spare its MLP), waiting for its bank, training, retired (converged), trained (its bank
ended before it converged) and, at level 0, grown (split into children with MLPs of their own).
Progress events carry a :class:`BlockReport` of it: the state, the current mean squared error and
the parameters of every block, which the progress model pastes into level-wide reports for the
debugging views of the front ends. Tracking only reads what training computes anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np
import torch

from .blocks import BlockGrid

__all__ = ["BlockReport", "BlockState", "BlockTracker", "STATE_DESCRIPTIONS"]


class BlockState(IntEnum):
    """State of a block of a level (the values are the labels of a block-state layer)."""

    UNKNOWN = 0
    PRUNED = 1
    WAITING = 2
    TRAINING = 3
    RETIRED = 4
    TRAINED = 5
    GROWN = 6

    @property
    def label(self) -> str:
        """Lower-case name, e.g. ``"retired"``."""
        return self.name.lower()


STATE_DESCRIPTIONS = {
    BlockState.UNKNOWN: "not reached yet (or trained by an earlier run)",
    BlockState.PRUNED: "no MLP: its residual is below the level's threshold, or level 0 spared it",
    BlockState.WAITING: "gets an MLP; its bank (or tile) has not started training",
    BlockState.TRAINING: "its MLP is being optimised",
    BlockState.RETIRED: "converged (error below retire_mse): its MLP is frozen",
    BlockState.TRAINED: "holds an MLP; its bank ended (target, plateau, max_steps) before it converged",
    BlockState.GROWN: "level 0: split into children, each with an MLP of its own",
}
"""What each state means (for legends and tooltips)."""


@dataclass(frozen=True, slots=True)
class BlockReport:
    """Per block of (a region of) a level's block grid: state, error and parameters.

    The reports carried by events are never changed; the progress model pastes them into
    level-wide reports of its own (:meth:`paste`), which it updates in place.

    Attributes
    ----------
    state : numpy.ndarray
        ``uint8`` :class:`BlockState` values, shaped like the block grid (of the region).
    loss : numpy.ndarray
        ``float32`` mean squared error of the level's estimate over each block, in normalised
        units (value range = 1); while a block trains, the error of its last step; NaN where
        unknown. A pruned block's error is its residual energy.
    n_params : numpy.ndarray
        ``int32`` parameters (weights and biases) of the MLPs of each block, its split children's
        included; 0 without an MLP (or while not yet known).
    origin : tuple of int
        Position of the region's first block in the level's grid (empty: the grid's origin).
    """

    state: np.ndarray
    loss: np.ndarray
    n_params: np.ndarray
    origin: tuple[int, ...] = ()

    @classmethod
    def empty(cls, grid_shape: Sequence[int]) -> BlockReport:
        """A report of ``grid_shape`` blocks whose state is unknown."""
        shape = tuple(int(s) for s in grid_shape)
        return cls(
            np.zeros(shape, np.uint8), np.full(shape, np.nan, np.float32), np.zeros(shape, np.int32)
        )

    @property
    def shape(self) -> tuple[int, ...]:
        """The block grid's shape (of the region)."""
        return tuple(self.state.shape)

    def at(self, origin: Sequence[int]) -> BlockReport:
        """The same report, placed at block ``origin`` of the level's grid."""
        return replace(self, origin=tuple(int(o) for o in origin))

    def region(self) -> tuple[slice, ...]:
        """The blocks this report covers in the level's grid."""
        origin = self.origin or (0,) * self.state.ndim
        return tuple(slice(o, o + s) for o, s in zip(origin, self.shape, strict=True))

    def copy(self) -> BlockReport:
        """A copy with arrays of its own."""
        return BlockReport(self.state.copy(), self.loss.copy(), self.n_params.copy(), self.origin)

    def paste(self, part: BlockReport) -> None:
        """Write ``part`` (a report of a region of the same level) into this level-wide report."""
        region = part.region()
        self.state[region] = part.state
        self.loss[region] = part.loss
        self.n_params[region] = part.n_params

    def settle(self, mlp_mask: np.ndarray) -> None:
        """The level finished: the blocks still unknown, waiting or training are settled.

        (Tiles trained by an earlier run, a stopped fit.) They are trained where ``mlp_mask``
        holds an MLP, pruned elsewhere.
        """
        pending = np.isin(self.state, _PENDING)
        self.state[pending & mlp_mask] = BlockState.TRAINED
        self.state[pending & ~mlp_mask] = BlockState.PRUNED

    def counts(self) -> dict[BlockState, int]:
        """Blocks in each state."""
        values = np.bincount(self.state.ravel(), minlength=len(BlockState))
        return {state: int(values[state]) for state in BlockState}

    def describe(self, index: Sequence[int]) -> str:
        """One block in words: ``"block (3, 4) · retired · 1,059 parameters · loss (MSE) 1.2e-05 = 49.2 dB"``."""
        index = tuple(int(i) for i in index)
        state = BlockState(int(self.state[index]))
        n_params = int(self.n_params[index])
        loss = float(self.loss[index])
        params = f"{n_params:,} parameters" if n_params or state is not BlockState.WAITING else "–"
        if math.isfinite(loss):
            psnr = 10.0 * math.log10(1.0 / loss) if loss > 0 else math.inf
            error = f"loss (MSE) {loss:.3g} = {psnr:.1f} dB"
        else:
            error = "loss –"
        return f"block {index} · {state.label} · {params} · {error}"


_PENDING = (BlockState.UNKNOWN, BlockState.WAITING, BlockState.TRAINING)


class BlockTracker:
    """Follows the blocks of one level's (or tile's) training; see the module docstring.

    Parameters
    ----------
    grid : BlockGrid
        The level's (tile's) block grid.
    trained : torch.Tensor
        Boolean per block: the blocks that get an MLP (not pruned before training).
    """

    def __init__(self, grid: BlockGrid, trained: torch.Tensor) -> None:
        self.grid = grid
        trained = trained.cpu().numpy()
        self._state = np.where(trained, BlockState.WAITING, BlockState.PRUNED).astype(np.uint8)
        self._params = np.zeros(grid.n_blocks, np.int64)  # main and lite MLPs
        self._split: dict[int, np.ndarray] = {}  # per split bank, its children's parameters
        self._split_sse: torch.Tensor | None = None  # growing: squared error per level block

    # ------------------------------------------------------------------ the banks on the grid
    def assign(self, block_ids: torch.Tensor, params_per_mlp: int) -> None:
        """Blocks ``block_ids`` get an MLP of ``params_per_mlp`` parameters."""
        self._params[block_ids.cpu().numpy()] = params_per_mlp

    def start(self, block_ids: torch.Tensor) -> None:
        """A bank of blocks ``block_ids`` starts training."""
        self._state[block_ids.cpu().numpy()] = BlockState.TRAINING

    def retire(self, block_ids: torch.Tensor) -> None:
        """Blocks ``block_ids`` converged."""
        self._state[block_ids.cpu().numpy()] = BlockState.RETIRED

    def end(self, block_ids: torch.Tensor) -> None:
        """The bank of blocks ``block_ids`` ended: those still training are trained."""
        ids = block_ids.cpu().numpy()
        training = self._state[ids] == BlockState.TRAINING
        self._state[ids[training]] = BlockState.TRAINED

    def drop(self, block_ids: torch.Tensor) -> None:
        """The MLPs of blocks ``block_ids`` were dropped (level 0 could spare them)."""
        ids = block_ids.cpu().numpy()
        self._state[ids] = BlockState.PRUNED
        self._params[ids] = 0

    # --------------------------------------------------------------------------- growing
    def level_sum(
        self, values: torch.Tensor, block_ids: torch.Tensor, grid: BlockGrid
    ) -> torch.Tensor:
        """Sum of ``values`` of blocks ``block_ids`` of a finer ``grid`` per block of the level."""
        factor = self.grid.block_size // grid.block_size
        rest, index = block_ids, []
        for size in reversed(grid.grid_shape):  # C order, last axis fastest
            index.insert(0, rest % size)
            rest = rest // size
        flat = torch.zeros_like(block_ids)
        for axis, size in enumerate(self.grid.grid_shape):
            flat = flat * size + index[axis] // factor
        out = torch.zeros(self.grid.n_blocks, dtype=torch.float64, device=values.device)
        return out.index_add_(0, flat, values.double())

    def grow(
        self, split: int, block_ids: torch.Tensor, grid: BlockGrid, params_per_mlp: int
    ) -> None:
        """Split bank ``split`` holds MLPs (``params_per_mlp`` each) for ``block_ids`` of ``grid``."""
        ones = torch.full_like(block_ids, params_per_mlp, dtype=torch.float64)
        self._split[split] = self.level_sum(ones, block_ids, grid).round().long().cpu().numpy()

    def growing(self, level_sse: torch.Tensor) -> None:
        """While (and after) a split bank trains: the squared error of each level block."""
        self._split_sse = level_sse

    # ---------------------------------------------------------------------------- reading
    def report(self, block_mse: torch.Tensor, counts: torch.Tensor) -> BlockReport:
        """The blocks now, with each block's MSE ``block_mse`` (``counts`` values per block).

        Once level 0 grows, the errors are those of :meth:`growing` instead.
        """
        split = sum(self._split.values(), np.zeros_like(self._params))
        state = np.where(split > 0, np.uint8(BlockState.GROWN), self._state)
        loss = block_mse if self._split_sse is None else self._split_sse / counts
        shape = self.grid.grid_shape
        return BlockReport(
            state.reshape(shape),
            loss.detach().to("cpu", torch.float32, copy=True).numpy().reshape(shape),
            (self._params + split).astype(np.int32).reshape(shape),
        )
