"""Where a level's capacity goes: which blocks to split, which MLPs level 0 can spare.

Pure tensor rules used by :class:`~napari_miner.core.training.LevelTraining`: the blocks still above
their share of the error are split (:func:`worst_blocks`, :func:`children_of`), and once level 0 is
quantised, the MLPs its PSNR target can do without are dropped (:func:`spared_mlps`,
:func:`keep_rows`).
"""

from __future__ import annotations

import numpy as np
import torch

from .blocks import BlockGrid
from .config import MinerConfig
from .model import LevelParams

__all__ = ["TRIM_MARGIN_DB", "children_of", "keep_rows", "spared_mlps", "worst_blocks"]

TRIM_MARGIN_DB = 0.02
"""Level 0 keeps this much above its target when MLPs it can spare are dropped."""


def spared_mlps(gains: torch.Tensor, slack: float) -> torch.Tensor:
    """Which MLPs to drop: those that do not help, then the least useful while ``slack`` lasts.

    ``gains[i]`` is what MLP ``i`` removes from the level's squared error (negative: its quantised
    output adds error); ``slack`` is the squared error the level may still add and stay at its
    target. Returns a boolean mask over ``gains``.
    """
    dropped = gains <= 0
    slack -= float(gains[dropped].sum())
    useful = torch.nonzero(~dropped).flatten()
    if slack > 0 and useful.numel():
        order = useful[torch.argsort(gains[useful])]
        spent = torch.cumsum(gains[order], dim=0)
        n = int(torch.searchsorted(spent, spent.new_tensor([slack]), right=True))
        dropped[order[:n]] = True
    return dropped


def keep_rows(bank: LevelParams, keep: torch.Tensor) -> None:
    """Keep only the MLPs of ``bank`` where the boolean ``keep`` is true."""
    if bool(keep.all()):
        return
    bank.block_ids = bank.block_ids[keep]
    bank.weights = [w[keep] for w in bank.weights]
    bank.biases = [b[keep] for b in bank.biases]


def worst_blocks(energy: torch.Tensor, counts: torch.Tensor, config: MinerConfig) -> torch.Tensor:
    """The blocks to split: the fewest, worst first, whose excess error would close the gap.

    A block's excess is its squared error above the target's MSE; the blocks are taken in order
    of excess until their excess covers 1.5 times what the level lacks (children do not remove
    all of it), and never a block already within the target's MSE.
    """
    share = 10.0 ** (-config.target_psnr / 10.0)
    excess = ((energy - share).clamp_min(0) * counts).double()
    missing = float((energy * counts).sum()) - share * float(counts.sum())
    order = torch.argsort(excess, descending=True)
    covered = torch.cumsum(excess[order], dim=0)
    n = int(torch.searchsorted(covered, covered.new_tensor([1.5 * missing]))) + 1
    chosen = order[: min(n, int((excess > 0).sum()))]
    return torch.sort(chosen).values


def children_of(chosen: np.ndarray, grid: BlockGrid) -> torch.Tensor:
    """Flat ids, on ``grid``, of the blocks whose parent (half as many per axis) is ``chosen``."""
    index = np.nonzero(chosen)
    if not index[0].size:
        return torch.zeros(0, dtype=torch.long)
    offsets = np.stack(np.meshgrid(*([[0, 1]] * grid.ndim), indexing="ij")).reshape(grid.ndim, -1)
    coords = np.stack(index)[:, :, None] * 2 + offsets[:, None, :]
    coords = coords.reshape(grid.ndim, -1)
    inside = np.all(coords < np.array(grid.grid_shape)[:, None], axis=0)
    flat = np.ravel_multi_index(tuple(coords[:, inside]), grid.grid_shape)
    return torch.from_numpy(np.sort(flat).astype(np.int64))
