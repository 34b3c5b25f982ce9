"""The banks of MLPs a level may have: its main blocks, and finer blocks where the error is.

Every level has its **main** bank: one MLP per block of ``config.block_size`` (blocks whose residual
is small get none), and a **lite** bank of narrower MLPs (``config.lite_width``) for the blocks
whose residual is at most ``config.lite_energy`` times the target's MSE: their capacity follows their
content. Level 0, whose error is the fit's error, may also grow **split** banks: when its
main bank plateaus above the target, each block still above its share of the error is split into
``2**d`` children of half the side, each with an MLP of its own that learns what the parent left
(``split1``: blocks of ``block_size / 2``, ``split2``: a quarter, ... up to ``config.max_splits``).
The banks of a level add up: decoding sums their outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .blocks import BlockGrid
from .config import MinerConfig
from .mlp_bank import layer_sizes, params_per_mlp

__all__ = ["BankSpec", "level_banks"]


@dataclass(frozen=True)
class BankSpec:
    """One bank of a level: its name, block side and MLP shape.

    Attributes
    ----------
    name : str
        ``"main"``, ``"lite"`` or ``"split{s}"``.
    block_size : int
        Side of its blocks.
    width : int
        Hidden width of its MLPs.
    hidden_layers : int
        Hidden sine layers of its MLPs.
    """

    name: str
    block_size: int
    width: int
    hidden_layers: int

    def grid(self, level_shape: tuple[int, ...]) -> BlockGrid:
        """The bank's block grid over a level of ``level_shape``."""
        return BlockGrid(level_shape, self.block_size)

    def layer_sizes(self, ndim: int, n_channels: int) -> list[tuple[int, int]]:
        """``(out, in)`` of every layer of its MLPs."""
        return layer_sizes(ndim, self.width, self.hidden_layers, n_channels)

    def params_per_mlp(self, ndim: int, n_channels: int) -> int:
        """Scalars of one of its MLPs."""
        return params_per_mlp(self.layer_sizes(ndim, n_channels))


def level_banks(config: MinerConfig, level: int) -> list[BankSpec]:
    """The banks of ``level`` under ``config``, the main bank first."""
    banks = [BankSpec("main", config.block_size, config.width_at(level), config.hidden_layers)]
    if config.lite_width is not None:
        banks.append(BankSpec("lite", config.block_size, config.lite_width, config.hidden_layers))
    if level == 0:
        width = config.split_width or config.hidden_width
        for s in range(1, config.max_splits + 1):
            banks.append(BankSpec(f"split{s}", config.block_size >> s, width, config.hidden_layers))
    return banks
