"""Decoding a level of a fitted model, or a region of it, tile by tile with cached coarser levels.

Level ``j``'s estimate is the ×2 upsampled estimate of level ``j + 1`` plus the residual that
level ``j``'s MLPs give (the coarsest level: its MLPs alone). :class:`TiledDecoder` evaluates a
region of the requested level in tiles of whole blocks (so that every intermediate stays in cache
and each block is evaluated once), and reads what it needs of the coarser levels from their
**estimate tiles**: block-aligned tiles of a fixed side that are computed once and kept in a
bounded :class:`~napari_miner.core.estimate_cache.EstimateCache` keyed by the model's fingerprint.
Neighbouring regions (the chunks of a lazily decoded pyramid) thus share their coarser levels
instead of each recomputing them with a halo, and a region costs what its pixels cost.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .blocks import add_blocks, array_from_blocks, local_coordinates
from .estimate_cache import EstimateCache, shared_cache
from .fingerprint import model_fingerprint
from .mlp_bank import bank_decode, bank_forward_chunked
from .pyramid import halo_bounds, upsampled_region

if TYPE_CHECKING:
    from .level_bank import LevelBank, LevelModel

__all__ = ["Bounds", "TiledDecoder", "add_residual", "split_bounds", "tile_side"]

Bounds = list[tuple[int, int]]
"""Half-open pixel range per spatial axis."""

TILE_SIDE = {2: 256, 3: 64}
"""Approximate side, in pixels, of the tiles a level is decoded and cached in on a CPU (small
enough for a tile's intermediates to stay in cache), per dimensionality."""

GPU_TILE_SIDE = {2: 2048, 3: 256}
"""The same on a GPU, where fewer, larger batches keep the device busy."""


def tile_side(block_size: int, ndim: int, device_type: str = "cpu") -> int:
    """Side of a decoding tile: whole blocks, about :data:`TILE_SIDE` (:data:`GPU_TILE_SIDE`) pixels."""
    sides = TILE_SIDE if device_type == "cpu" else GPU_TILE_SIDE
    return block_size * max(1, sides.get(ndim, 64) // block_size)


def add_residual(
    out: torch.Tensor | None,
    bank: LevelBank,
    bounds: Bounds,
    n_channels: int,
    device: torch.device,
    exact: bool = False,
) -> torch.Tensor | None:
    """Add what one bank's MLPs give over ``bounds`` to ``out`` (``(C, *region)``).

    Returns ``out`` (a new tensor if ``out`` is ``None`` and the bank has MLPs there). With
    ``exact``, the MLPs are evaluated by training's kernel (:func:`bank_forward_chunked`), whose
    values training's estimates hold bit for bit; otherwise by the faster :func:`bank_decode`,
    equal to float32 rounding.
    """
    grid = bank.grid
    b = grid.block_size
    ranges = grid.block_range([slice(lo, hi) for lo, hi in bounds])
    sub_grid = [hi - lo for lo, hi in ranges]
    flat = torch.zeros((), dtype=torch.long)
    for axis, (lo, hi) in enumerate(ranges):
        flat = flat.unsqueeze(-1) * grid.grid_shape[axis] + torch.arange(lo, hi)
    present, weights, biases = bank.gather(flat.reshape(-1))
    n_present = int(present.sum())
    if n_present == 0:
        return out
    weights = [w.to(device) for w in weights]
    biases = [x.to(device) for x in biases]
    if exact:
        coords = local_coordinates(b, grid.ndim, device)
        evaluated = bank_forward_chunked(weights, biases, coords)
    else:
        evaluated = bank_decode(weights, biases, b, grid.ndim)
    if n_present == present.numel():
        values = evaluated
    else:
        values = torch.zeros((present.numel(), n_channels, b**grid.ndim), device=device)
        values[present.to(device)] = evaluated
    aligned = all(
        lo == r0 * b and hi == r1 * b for (lo, hi), (r0, r1) in zip(bounds, ranges, strict=True)
    )
    if out is not None and aligned and out.is_contiguous():
        # add the blocks where they lie, without assembling the bank's image first
        return add_blocks(out, values, sub_grid, b)
    array = array_from_blocks(values, sub_grid, b)
    crop = tuple(
        slice(lo - r0 * b, hi - r0 * b) for (lo, hi), (r0, _) in zip(bounds, ranges, strict=True)
    )
    residual = array[(slice(None),) + crop]
    return residual if out is None else out.add_(residual)


def split_bounds(bounds: Bounds, side: int) -> Iterator[Bounds]:
    """``bounds`` cut along the tile grid of ``side`` (in C order of the pieces)."""
    per_axis = []
    for lo, hi in bounds:
        cuts = [lo] + list(range((lo // side + 1) * side, hi, side)) + [hi]
        per_axis.append(list(itertools.pairwise(cuts)))
    for piece in itertools.product(*per_axis):
        yield list(piece)


class TiledDecoder:
    """Normalised estimates of any region of any level of ``model``.

    Parameters
    ----------
    model : LevelModel
        The model to decode.
    device : torch.device
        Where to evaluate the MLPs and keep the cached tiles.
    cache : EstimateCache, optional
        Where coarser levels' estimate tiles are kept (default: the process-wide cache).
    exact : bool
        Evaluate with training's kernel: the estimates training held, bit for bit (slower).
    """

    def __init__(
        self,
        model: LevelModel,
        device: torch.device,
        cache: EstimateCache | None = None,
        exact: bool = False,
    ) -> None:
        self.model = model
        self.device = device
        self.exact = exact
        self.cache = cache if cache is not None else shared_cache()
        self.n_channels = model.layout.n_channels
        self.ndim = len(model.layout.spatial_shape)
        self.side = tile_side(model.config.block_size, self.ndim, device.type)
        self.fingerprint = model_fingerprint(model)

    def pieces(self, bounds: Bounds) -> Iterator[Bounds]:
        """``bounds`` cut into the decoder's tiles (what :meth:`estimate` is best called with)."""
        return split_bounds(bounds, self.side)

    def estimate(self, level: int, bounds: Bounds) -> torch.Tensor:
        """The normalised ``(C, *region)`` estimate of ``level`` over ``bounds`` (a new tensor).

        The coarser estimate first, then each bank's residual in turn: the order in which
        training sums them (:class:`~napari_miner.core.training.LevelTraining`).
        """
        out = None
        if level < self.model.n_levels - 1:
            parent_shape = self.model.levels[level + 1].grid.shape
            read = functools.partial(self.cached, level + 1)
            out = upsampled_region(read, parent_shape, bounds).contiguous()
        main = self.model.levels[level]
        for bank in (main, *main.extra):
            out = add_residual(out, bank, bounds, self.n_channels, self.device, self.exact)
        if out is None:
            shape = (self.n_channels, *(hi - lo for lo, hi in bounds))
            return torch.zeros(shape, device=self.device)
        return out

    def prepare(self, level: int, bounds: Bounds) -> None:
        """Compute the coarser levels under ``bounds`` of ``level`` tile by tile, coarsest first.

        Before a large region is decoded piece by piece: each coarser tile is then computed
        whole, once, instead of in the slivers that each piece (and its halo) needs.
        """
        footprints = []
        for j in range(level + 1, self.model.n_levels):
            bounds = halo_bounds(bounds, self.model.levels[j].grid.shape)
            footprints.append((j, bounds))
        for j, region in reversed(footprints):
            shape = self.model.levels[j].grid.shape
            for part in self.pieces(region):
                self._filled(j, self._index(part), shape, part)

    def cached(self, level: int, bounds: Bounds) -> torch.Tensor:
        """The estimate of ``level`` over ``bounds``, from its cached tiles (filled as needed)."""
        shape = self.model.levels[level].grid.shape
        parts = list(self.pieces(bounds))
        if len(parts) == 1:
            index = self._index(bounds)
            tile = self._filled(level, index, shape, bounds)
            return tile[(slice(None),) + self._local(bounds, index)]
        out = torch.empty((self.n_channels, *(hi - lo for lo, hi in bounds)), device=self.device)
        for part in parts:
            index = self._index(part)
            tile = self._filled(level, index, shape, part)
            target = tuple(
                slice(a - lo, b - lo) for (a, b), (lo, _) in zip(part, bounds, strict=True)
            )
            out[(slice(None),) + target] = tile[(slice(None),) + self._local(part, index)]
        return out

    def _index(self, piece: Bounds) -> tuple[int, ...]:
        """The tile a piece of :meth:`pieces` lies in."""
        return tuple(lo // self.side for lo, _ in piece)

    def _local(self, bounds: Bounds, index: tuple[int, ...]) -> tuple[slice, ...]:
        side = self.side
        return tuple(
            slice(lo - i * side, hi - i * side) for (lo, hi), i in zip(bounds, index, strict=True)
        )

    def _filled(
        self, level: int, index: tuple[int, ...], shape: Sequence[int], bounds: Bounds
    ) -> torch.Tensor:
        """Tile ``index`` of ``level``, with at least the blocks under ``bounds`` computed."""
        side, block = self.side, self.model.config.block_size
        origin = [i * side for i in index]
        extent = [min(side, s - o) for o, s in zip(origin, shape, strict=True)]
        key = (self.fingerprint, str(self.device), self.exact, level, index)
        tile = self.cache.get(
            key, lambda: EstimateTile(self.n_channels, extent, block, self.device)
        )
        # the whole blocks of the tile under bounds
        box = [
            ((lo - o) // block * block, min(-(-(hi - o) // block) * block, e))
            for (lo, hi), o, e in zip(bounds, origin, extent, strict=True)
        ]
        return tile.fill(
            box,
            lambda: self.estimate(
                level, [(o + a, o + b) for (a, b), o in zip(box, origin, strict=True)]
            ),
        )


class EstimateTile:
    """One cached tile of a level's estimate, computed block by block as regions need it.

    A region that needs only the edge of a tile (the one-pixel halo of an upsampling) computes
    the blocks along that edge, not the whole tile; what is computed is kept.
    """

    def __init__(
        self, n_channels: int, extent: Sequence[int], block: int, device: torch.device
    ) -> None:
        self.values = torch.zeros((n_channels, *extent), device=device)
        self.block = block
        self.valid = np.zeros([-(-e // block) for e in extent], dtype=bool)
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of the tile's values."""
        return self.values.element_size() * self.values.numel()

    def fill(self, box: list[tuple[int, int]], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The tile's values, once the blocks of ``box`` (tile pixels) are computed.

        ``compute()`` gives the estimate over ``box``; it is called only if a block of the box
        is missing.
        """
        blocks = tuple(slice(a // self.block, -(-b // self.block)) for a, b in box)
        with self._lock:
            if not self.valid[blocks].all():
                self.values[(slice(None),) + tuple(slice(a, b) for a, b in box)] = compute()
                self.valid[blocks] = True
        return self.values
