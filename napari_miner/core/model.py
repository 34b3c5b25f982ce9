"""The fitted MINER model: per-level block banks, and decoding of any level and any region."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .blocks import BlockGrid
from .config import MinerConfig
from .decoding import TiledDecoder
from .errors import InvalidInputError
from .layout import InputLayout
from .level_bank import LevelBank
from .mlp_bank import count_parameters
from .pyramid import level_shapes


def pooled_mask(bank: LevelBank, grid: BlockGrid) -> np.ndarray:
    """``bank``'s block mask on the coarser ``grid``: a cell is set where any finer block is."""
    mask = bank.active_mask()
    factor = grid.block_size // bank.grid.block_size
    out = np.zeros(grid.grid_shape, dtype=bool)
    index = np.nonzero(mask)
    out[tuple(i // factor for i in index)] = True
    return out


@dataclass(eq=False)
class LevelParams:
    """The MLPs of one pyramid level.

    Attributes
    ----------
    grid : BlockGrid
        Block layout of the level.
    block_ids : torch.Tensor
        ``(n,)`` int64, sorted flat indices (C order over the block grid) of the blocks with an MLP.
    weights, biases : list of torch.Tensor
        The bank of those ``n`` MLPs (see :mod:`napari_miner.core.mlp_bank`).
    stats : dict
        Training statistics of the level (plain JSON values).
    extra : tuple of LevelParams
        The level's further banks (finer blocks added where the error is), empty if none.
    bits : int or None
        The weights lie on the grid of this many bits (:mod:`napari_miner.core.quantize`);
        ``None`` for float weights.
    """

    grid: BlockGrid
    block_ids: torch.Tensor
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    stats: dict[str, Any] = field(default_factory=dict)
    extra: tuple[LevelParams, ...] = ()
    bits: int | None = None

    @property
    def n_mlps(self) -> int:
        """Number of MLPs of the level (every bank)."""
        return int(self.block_ids.numel()) + sum(bank.n_mlps for bank in self.extra)

    @property
    def n_parameters(self) -> int:
        """Every weight and bias of the level (every bank)."""
        own = count_parameters(self.weights, self.biases)
        return own + sum(bank.n_parameters for bank in self.extra)

    def gather(
        self, block_ids: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """MLPs of the given flat block indices (see :class:`LevelBank`).

        Memory follows the query and the bank, never the size of the block grid.
        """
        ids = self.block_ids.cpu()
        query = block_ids.cpu()
        rows = torch.searchsorted(ids, query).clamp_max(max(ids.numel() - 1, 0))
        present = ids[rows] == query if ids.numel() else torch.zeros_like(query, dtype=torch.bool)
        take = rows[present]
        weights = [w[take].cpu() for w in self.weights]
        biases = [b[take].cpu() for b in self.biases]
        return present, weights, biases

    def active_mask(self) -> np.ndarray:
        """Boolean mask over the block grid of the blocks with an MLP in any bank."""
        mask = self.grid.mask(self.block_ids)
        for bank in self.extra:
            mask |= pooled_mask(bank, self.grid)
        return mask

    def to(self, device: torch.device | str) -> LevelParams:
        """Copy of the level (every bank) on ``device``."""
        return LevelParams(
            self.grid,
            self.block_ids.to(device, copy=True),
            [w.detach().to(device, copy=True) for w in self.weights],
            [b.detach().to(device, copy=True) for b in self.biases],
            dict(self.stats),
            tuple(bank.to(device) for bank in self.extra),
            self.bits,
        )


class PyramidModel:
    """A fitted multiscale implicit neural representation (decoding only; see ``napari_miner.MinerModel``).

    Level ``j`` of the model is the signal at ``1 / 2**j`` resolution (spatial shape
    ``ceil(shape / 2**j)``): the coarsest level's MLPs give the signal, every finer level adds its
    MLPs' residual to the ×2 upsampled coarser estimate.

    Parameters
    ----------
    layout : InputLayout
        Shape, dtype, channel layout and value range of the fitted input.
    config : MinerConfig
        Settings the model was fitted with.
    levels : list of LevelParams or LevelBank
        One entry per level, level 0 (full resolution) first. In-memory levels are copied to the
        CPU; other banks (read from a store on demand) are used as they are.
    metadata : dict, optional
        Fit statistics and provenance (plain JSON values).
    """

    def __init__(
        self,
        layout: InputLayout,
        config: MinerConfig,
        levels: Sequence[LevelBank],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.layout = layout
        self.config = config
        self.levels: list[LevelBank] = [
            level.to("cpu") if isinstance(level, LevelParams) else level for level in levels
        ]
        self.metadata = dict(metadata or {})

    # ----------------------------------------------------------------- description
    @property
    def n_levels(self) -> int:
        """Number of pyramid levels (level 0 = full resolution)."""
        return len(self.levels)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the fitted input (and of ``decode(level=0)``)."""
        return self.layout.shape

    @property
    def dtype(self) -> np.dtype:
        """Dtype of the fitted input (and of every decode)."""
        return np.dtype(self.layout.dtype)

    @property
    def is_rgb(self) -> bool:
        """Whether the input was RGB(A)."""
        return self.layout.rgb

    @property
    def value_range(self) -> tuple[float, float]:
        """``(min, max)`` of the input values."""
        return (self.layout.value_min, self.layout.value_max)

    @property
    def n_parameters(self) -> int:
        """Every stored weight and bias, all levels together."""
        return sum(lv.n_parameters for lv in self.levels)

    def level_shape(self, level: int) -> tuple[int, ...]:
        """Spatial shape of ``level``."""
        return self.levels[self._check_level(level)].grid.shape

    def decoded_shape(self, level: int) -> tuple[int, ...]:
        """Array shape of ``decode(level)``: spatial axes of that level, channel axis as the input."""
        shape = list(self.level_shape(level))
        if self.layout.channel_axis is not None:
            shape.insert(self.layout.channel_axis, self.layout.n_channels)
        return tuple(shape)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, levels={self.n_levels}, "
            f"parameters={self.n_parameters})"
        )

    # --------------------------------------------------------------------- decoding
    def decode(
        self,
        level: int = 0,
        region: Sequence[slice] | None = None,
        device: torch.device | str = "cpu",
    ) -> np.ndarray:
        """Decode a level, or a region of it, to an array like the input.

        Parameters
        ----------
        level : int
            Pyramid level; 0 is full resolution, level ``j`` has sides ``ceil(shape / 2**j)``.
        region : tuple of slice, optional
            One slice per spatial axis (in level-``j`` pixels, step 1). Only the blocks that
            intersect the region are evaluated; the coarser levels beneath it come from cached
            estimate tiles (:mod:`napari_miner.core.decoding`).
        device : str or torch.device
            Where to evaluate the MLPs.

        Returns
        -------
        numpy.ndarray
            Same dtype, value range and axis order as the input; spatial shape of the region.
        """
        level = self._check_level(level)
        bounds = self._region_bounds(level, region)
        decoder = TiledDecoder(self, torch.device(device))
        pieces = list(decoder.pieces(bounds))
        with torch.no_grad():
            if len(pieces) == 1:
                return self.layout.denormalize(decoder.estimate(level, bounds))
            shape = [hi - lo for lo, hi in bounds]
            channel_axis = self.layout.channel_axis
            if channel_axis is not None:
                shape.insert(channel_axis, self.layout.n_channels)
            out = np.empty(shape, dtype=self.dtype)
            decoder.prepare(level, bounds)
            for piece in pieces:  # tile by tile: every intermediate stays small
                index = [
                    slice(a - lo, b - lo) for (a, b), (lo, _) in zip(piece, bounds, strict=True)
                ]
                if channel_axis is not None:
                    index.insert(channel_axis, slice(None))
                out[tuple(index)] = self.layout.denormalize(decoder.estimate(level, piece))
        return out

    def decode_normalized(
        self,
        level: int = 0,
        region: Sequence[slice] | None = None,
        device: torch.device | str = "cpu",
        exact: bool = False,
    ) -> torch.Tensor:
        """Like :meth:`decode` but returns the normalised ``(C, *spatial)`` float32 tensor.

        With ``exact``, the values are those training computed, bit for bit (training's slower
        kernel; for resuming a fit), otherwise equal to them to float32 rounding.
        """
        level = self._check_level(level)
        bounds = self._region_bounds(level, region)
        with torch.no_grad():
            return TiledDecoder(self, torch.device(device), exact=exact).estimate(level, bounds)

    def _check_level(self, level: int) -> int:
        if not isinstance(level, int | np.integer) or not 0 <= level < self.n_levels:
            raise InvalidInputError(
                f"level must be an integer in [0, {self.n_levels - 1}], got {level!r}"
            )
        return int(level)

    def _region_bounds(self, level: int, region: Sequence[slice] | None) -> list[tuple[int, int]]:
        shape = self.levels[level].grid.shape
        if region is None:
            return [(0, s) for s in shape]
        if not isinstance(region, Sequence) or len(region) != len(shape):
            raise InvalidInputError(
                f"region must be a tuple of {len(shape)} slices (one per spatial axis), got {region!r}"
            )
        bounds = []
        for r, s in zip(region, shape, strict=True):
            if not isinstance(r, slice):
                raise InvalidInputError(f"region entries must be slices, got {r!r}")
            start, stop, step = r.indices(s)
            if step != 1 or stop <= start:
                raise InvalidInputError(
                    f"region slice {r} is empty or has a step for a side of {s}"
                )
            bounds.append((start, stop))
        return bounds


def empty_bank(grid: BlockGrid, sizes: list[tuple[int, int]]) -> LevelParams:
    """A bank of ``grid`` without any MLP, for layers of ``(out, in)`` ``sizes``."""
    weights = [torch.zeros((0, o, i)) for o, i in sizes]
    biases = [torch.zeros((0, o, 1)) for o, _ in sizes]
    return LevelParams(grid, torch.zeros(0, dtype=torch.long), weights, biases)


def empty_levels(shape: Sequence[int], config: MinerConfig, n_channels: int) -> list[LevelParams]:
    """Levels without any MLP (a model that decodes to zeros), the starting point of a fit.

    Every level has the banks that ``config`` gives it (:func:`~napari_miner.core.banks.level_banks`).
    """
    from .banks import level_banks

    levels = []
    for j, level_shape in enumerate(level_shapes(shape, config.n_levels)):
        banks = [
            empty_bank(spec.grid(level_shape), spec.layer_sizes(len(shape), n_channels))
            for spec in level_banks(config, j)
        ]
        main = banks[0]
        main.extra = tuple(banks[1:])
        levels.append(main)
    return levels
