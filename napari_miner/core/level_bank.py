"""What decoding reads of a model: its levels (banks of block MLPs) and its layout and settings.

Protocols only, so that decoding (:mod:`napari_miner.core.decoding`) and fingerprints
(:mod:`napari_miner.core.fingerprint`) need not import the model that uses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .blocks import BlockGrid
from .config import MinerConfig
from .layout import InputLayout

__all__ = ["LevelBank", "LevelModel"]


@runtime_checkable
class LevelBank(Protocol):
    """What decoding needs of one pyramid level: its grid and the MLPs of any set of blocks.

    A level's main bank (blocks of ``config.block_size``) is the level object itself; ``extra``
    holds its further banks (the finer blocks that capacity growth adds where the error is, see
    :mod:`napari_miner.core.banks`), each a bank of its own grid; decoding adds them all up.
    :class:`LevelParams` holds a level in memory; the model store provides levels that are read
    tile by tile on demand (:mod:`napari_miner.io.stored_level`).
    """

    grid: BlockGrid
    stats: dict[str, Any]
    extra: tuple[LevelBank, ...]

    @property
    def n_mlps(self) -> int:
        """Number of MLPs of the level (every bank)."""
        ...

    @property
    def n_parameters(self) -> int:
        """Every weight and bias of the level (every bank)."""
        ...

    def active_mask(self) -> np.ndarray:
        """Boolean mask over the (main) block grid of the blocks with an MLP in any bank."""
        ...

    def gather(
        self, block_ids: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """MLPs of the given flat block indices.

        Returns a boolean tensor (which of ``block_ids`` hold an MLP) and the weights and biases of
        those blocks, in the order of ``block_ids``, on the CPU. Only this bank's MLPs.
        """
        ...


class LevelModel(Protocol):
    """What decoding and fingerprints read of a model (:class:`~napari_miner.core.model.PyramidModel`)."""

    layout: InputLayout
    config: MinerConfig
    levels: Sequence[LevelBank]

    @property
    def n_levels(self) -> int:
        """Number of pyramid levels."""
        ...
