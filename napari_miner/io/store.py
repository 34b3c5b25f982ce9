"""The model store: one format for every fitted model, written and read tile by tile.

Every model is stored the same way, whatever trained it: a ``*.miner.zarr`` directory (a zarr v2
group) that holds, per level, the block mask and every block's packed MLP, cut into tiles, with a
record per finished tile (its checksum and statistics). The layout and the checks made whenever a
store is opened are in :mod:`napari_miner.io.schema`.

* :class:`ModelStore` creates a store, adds finished tiles to it (a fit does so as it trains, from
  one or many processes: every tile has chunk files of its own, its record written last), and reads
  verified tiles back.
* :func:`save_model` writes any model to a new store, atomically and under the path's lock;
  :func:`load_model` opens a store (of this format, or of the older formats 1 and 2) as a model
  whose levels are read tile by tile on demand.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.blocks import BlockGrid
from ..core.config import MinerConfig
from ..core.errors import ModelFormatError
from ..core.layout import InputLayout
from ..core.mlp_bank import pack_bank
from ..core.model import PyramidModel
from ..core.quantize import decode_packed, encode_packed
from ..core.tiles import tile_blocks_region, tile_indices
from .atomic import PathLock, atomic_directory, fsync_directory
from .chunks import FIT_CLEVEL, ArraySpec, read_chunk, read_json, write_chunk, write_json
from .records import TileRecord, read_records, records_stats
from .schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SUFFIX,
    BankHeader,
    LevelHeader,
    StoreHeader,
    StoreListing,
    check_params,
    check_quantized,
    level_headers,
    open_listing,
    parse_attributes,
    parse_header,
    root_attributes,
    to_json,
)
from .stored_level import StoredLevel

__all__ = [
    "ModelStore",
    "SUFFIX",
    "check_overwritable",
    "is_model_store",
    "load_model",
    "save_model",
    "store_tile_blocks",
]

DEFAULT_TILE_SIDE = {2: 32, 3: 8}
"""Tile side in blocks of a store (1024 blocks in 2D, 512 in 3D), unless training tiles are smaller."""
TARGET_CHUNK_BYTES = 16 << 20


def store_tile_blocks(level: LevelHeader, within: Sequence[int] | None = None) -> tuple[int, ...]:
    """Tile shape (blocks per axis) of a level in a store.

    Tiles are small (at most :data:`DEFAULT_TILE_SIDE` blocks and about 16 MiB of MLPs in each of
    the level's banks), so that reading a region never reads much more than the region. ``within``
    is the shape of the tiles a fit trains: every store tile then lies inside one training tile.
    """
    grid = level.grid
    per_block = max(
        (grid.block_size // bank.grid.block_size) ** grid.ndim * bank.params_per_mlp * 4
        for bank in level.banks
    )
    side = DEFAULT_TILE_SIDE.get(grid.ndim, 8)
    while side > 1 and side**grid.ndim * per_block > TARGET_CHUNK_BYTES:
        side //= 2
    sides = []
    for axis, g in enumerate(grid.grid_shape):
        t = side
        if within is not None and within[axis] < g:
            outer = int(within[axis])
            t = outer if outer <= side else math.gcd(outer, side)
        sides.append(max(1, min(t, g)))
    return tuple(sides)


def tile_digest(arrays: Sequence[np.ndarray]) -> bytes:
    """SHA-256 of a tile's arrays as stored.

    Every bank's mask, params and scales, in order; little-endian, C order.
    """
    digest = hashlib.sha256()
    for array in arrays:
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        digest.update(data.view(np.uint8).reshape(-1))
    return digest.digest()


Tile = list[tuple[np.ndarray, np.ndarray]]
"""A tile's banks: per bank, its ``(*tile)`` uint8 block mask and ``(*tile, P)`` float32 MLPs."""


class ModelStore:
    """A format-3 model store: create it, add tiles, read verified tiles, update its attributes.

    Open one with :meth:`open` (every check of :mod:`~napari_miner.io.schema` runs) or make a new
    one with :meth:`create`. Only one process may change the attributes (the fit's coordinator,
    holding the path's :class:`~napari_miner.io.atomic.PathLock`); tiles may be written by many.
    """

    def __init__(self, header: StoreHeader, records: list[dict[tuple[int, ...], TileRecord]]):
        self.header = header
        self.path = header.root
        self._records = records
        self.durable = True
        """Flush every tile's data to disk before its record (a fit that a power loss interrupts
        never has a recorded tile without its data); a save, flushed as a whole before it is
        renamed into place, turns this off."""
        self.compact = False
        """Compress quantised weights as much as Blosc's zstd can (level 9, ~0.5 s per MB); a
        save turns this on. A fit writes them at level 1 (~200× faster, ~2 % larger), so that
        compressing tiles does not take most of an out-of-core fit's time; saving the model again
        (``load(path).save(other)``) compacts it."""

    # ---------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | PathLike[str]) -> ModelStore:
        """Open and validate a store of the current format.

        Raises
        ------
        ModelFormatError
            If the store is missing, damaged, or not of format version 3.
        """
        listing = open_listing(path)
        attributes = root_attributes(listing)
        if attributes["format_version"] != FORMAT_VERSION:
            raise ModelFormatError(
                f"{listing.root} is a model of format version {attributes['format_version']}, "
                f"which is read-only: save it again to get format {FORMAT_VERSION}"
            )
        return cls.from_listing(listing, attributes)

    @classmethod
    def from_listing(cls, listing: StoreListing, attributes: dict[str, Any]) -> ModelStore:
        """The store of an already listed directory (see :func:`~napari_miner.io.schema.open_listing`)."""
        header = parse_header(listing, attributes)
        records = [read_records(listing, header, j) for j in range(len(header.levels))]
        return cls(header, records)

    @classmethod
    def create(
        cls,
        directory: str | PathLike[str],
        layout: InputLayout,
        config: MinerConfig,
        tile_blocks: Sequence[Sequence[int]],
        metadata: dict[str, Any],
        input_info: dict[str, Any] | None = None,
        fit: dict[str, Any] | None = None,
        bits: Sequence[int | None] | None = None,
    ) -> ModelStore:
        """Write an empty store (no tile finished) into the empty or new ``directory``.

        ``bits`` gives each level's quantisation (``None``: float32 weights, the default).
        Callers make this atomic by creating the store in a temporary directory
        (:func:`~napari_miner.io.atomic.atomic_directory`).
        """
        root = Path(os.fspath(directory))
        root.mkdir(exist_ok=True)
        root = root.resolve()
        tiles = [tuple(int(t) for t in tb) for tb in tile_blocks]
        levels = level_headers(layout, config, tiles, None if bits is None else list(bits))
        groups = {Path("."), Path("levels")}
        for j, level in enumerate(levels):
            for name, spec in level.specs().items():
                array_dir = root / "levels" / str(j) / name
                array_dir.mkdir(parents=True, exist_ok=True)
                write_json(array_dir / ".zarray", spec.to_zarray())
                groups.update(array_dir.relative_to(root).parents)
        for group in groups - {Path(".")}:
            write_json(root / group / ".zgroup", {"zarr_format": 2})
        write_json(root / ".zgroup", {"zarr_format": 2})
        attributes = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "status": "fitting",
            "config": to_json(config.to_dict(), "config"),
            "layout": to_json(layout.to_dict(), "layout"),
            "metadata": to_json(metadata, "metadata"),
            "input": None if input_info is None else to_json(input_info, "input"),
            "fit": None if fit is None else to_json(fit, "fit"),
            "levels": [
                {"tile_blocks": list(level.tile_blocks), "bits": level.bits,
                 "prune_threshold": None, "n_active": None, "stats": {}}
                for level in levels
            ],
        }  # fmt: skip
        write_json(root / ".zattrs", attributes)  # last: without it, nothing is a store
        return cls.from_listing(open_listing(root), attributes)

    # ------------------------------------------------------------------------ description
    @property
    def config(self) -> MinerConfig:
        """Training settings of the model."""
        return self.header.config

    @property
    def layout(self) -> InputLayout:
        """Layout of the fitted input."""
        return self.header.layout

    @property
    def n_levels(self) -> int:
        """Pyramid levels."""
        return len(self.header.levels)

    @property
    def complete(self) -> bool:
        """Whether the fit finished (every tile is in the store)."""
        return self.header.complete

    def grid(self, level: int) -> BlockGrid:
        """Block grid of ``level``."""
        return self.header.levels[level].grid

    def tile_blocks(self, level: int) -> tuple[int, ...]:
        """Tile shape (blocks per axis) of ``level``."""
        return self.header.levels[level].tile_blocks

    def banks(self, level: int) -> list[BankHeader]:
        """The banks of ``level``, the main bank first."""
        return self.header.levels[level].banks

    def level_bits(self, level: int) -> int | None:
        """Quantisation of ``level``'s weights (``None``: float32)."""
        return self.header.levels[level].bits

    def tiles(self, level: int) -> list[tuple[int, ...]]:
        """Every tile position of ``level``, in C order."""
        return tile_indices(self.grid(level), self.tile_blocks(level))

    def records(self, level: int) -> dict[tuple[int, ...], TileRecord]:
        """Records of the finished tiles of ``level`` (as of opening, plus tiles written since)."""
        return self._records[level]

    def level_stats(self, level: int) -> dict[str, Any]:
        """Statistics of ``level``: as stored, or summed over its finished tiles while it trains."""
        info = self.header.levels[level]
        if info.stats or self.complete:
            return dict(info.stats)
        return records_stats(self._records[level], info, self.config.iou_threshold is not None)

    # ---------------------------------------------------------------------------- writing
    def _spec(self, level: int, name: str) -> ArraySpec:
        return self.header.levels[level].specs()[name]

    def write_tile(
        self, level: int, index: Sequence[int], banks: Tile, stats: dict[str, float]
    ) -> TileRecord:
        """Write a finished tile: its data first, its record (checksum and statistics) last.

        ``banks`` holds, per bank of the level, the tile's ``(*tile)`` uint8 block mask and
        ``(*tile, P)`` packed MLPs (zeros where a block has none; quantised levels: values on the
        grid of the level's bits, stored as integers and scales); ``stats`` the record's
        statistics.
        """
        index = tuple(int(i) for i in index)
        info = self.header.levels[level]
        if len(banks) != len(info.banks):
            raise ModelFormatError(f"level {level} has {len(info.banks)} banks, got {len(banks)}")
        base = self.path / "levels" / str(level)
        durable, stored, counts = self.durable, [], []
        for bank, (mask, params) in zip(info.banks, banks, strict=True):
            region = tile_blocks_region(bank.grid, bank.tile_blocks, index)
            expected = tuple(r.stop - r.start for r in region)
            mask = np.ascontiguousarray(mask, dtype=np.uint8)
            params = np.ascontiguousarray(params, dtype="<f4")
            if mask.shape != expected or params.shape != (*expected, bank.params_per_mlp):
                raise ModelFormatError(
                    f"tile {index} of level {level} has a {bank.name} bank of shape {mask.shape}, "
                    f"expected {expected}"
                )
            arrays = {"mask": mask, "params": params}
            if info.bits is not None:
                flat = params.reshape(-1, bank.params_per_mlp)
                ints, scales = encode_packed(flat, bank.sizes, info.bits)
                arrays["params"] = ints.reshape(params.shape)
                arrays["scales"] = scales.reshape(*expected, bank.n_scales)
            for name, array in arrays.items():
                key = index if name == "mask" else (*index, 0)
                spec = self._spec(level, f"{bank.name}/{name}")
                if name == "params" and info.bits is not None and not self.compact:
                    spec = replace(spec, compressor={**spec.compressor, "clevel": FIT_CLEVEL})
                write_chunk(base / bank.name / name, spec, key, array, durable)
                stored.append(array)
            counts.append(int(mask.sum()))
        if durable:  # the data is on disk before the record that says the tile is finished
            for bank in info.banks:
                for name in bank.specs(info.bits):
                    fsync_directory(base / bank.name / name)
        record = TileRecord(
            tile_digest(stored), sum(counts), float(stats.get("sse", 0.0)),
            float(stats.get("count", 0.0)), int(stats.get("steps", 0)),
            float(stats.get("elapsed_s", 0.0)), float(stats.get("intersection", 0.0)),
            float(stats.get("union", 0.0)), tuple(counts),
        )  # fmt: skip
        raw = np.frombuffer(record.encode(), dtype=np.uint8).reshape((1,) * len(index) + (-1,))
        write_chunk(base / "records", self._spec(level, "records"), (*index, 0), raw, durable)
        self._records[level][index] = record
        return record

    def update_attributes(self, **changes: Any) -> None:
        """Replace root attributes (JSON values) and rewrite ``.zattrs`` atomically."""
        attributes = dict(self.header.attributes)
        attributes.update({k: to_json(v, k) for k, v in changes.items()})
        header = parse_attributes(self.path, attributes)
        write_json(self.path / ".zattrs", attributes)
        self.header = header

    def update_level(self, level: int, **changes: Any) -> None:
        """Change attributes of one level (``prune_threshold``, ``n_active``, ``stats``)."""
        levels = [dict(info) for info in self.header.attributes["levels"]]
        levels[level].update(changes)
        self.update_attributes(levels=levels)

    # ---------------------------------------------------------------------------- reading
    def read_tile(self, level: int, index: Sequence[int]) -> Tile:
        """A finished tile's banks (masks and float32 packed MLPs), verified.

        Raises
        ------
        ModelFormatError
            If the tile is not finished, or its data is missing, damaged or does not match its
            checksum.
        """
        index = tuple(int(i) for i in index)
        what = f"{self.path}: tile {index} of level {level}"
        record = self._records[level].get(index)
        if record is None:
            raise ModelFormatError(f"{what} is not finished")
        info = self.header.levels[level]
        base = self.path / "levels" / str(level)
        stored, per_bank = [], []
        for bank in info.banks:
            arrays = {}
            for name in bank.specs(info.bits):
                key = index if name == "mask" else (*index, 0)
                spec = self._spec(level, f"{bank.name}/{name}")
                arrays[name] = read_chunk(base / bank.name / name, spec, key, what)
                stored.append(arrays[name])
            per_bank.append(arrays)
        if tile_digest(stored) != record.digest:
            raise ModelFormatError(
                f"{what} does not match its checksum: the store is damaged (a chunk file was "
                "changed or replaced)"
            )
        tile = []
        for bank, arrays in zip(info.banks, per_bank, strict=True):
            params = arrays["params"]
            if info.bits is not None:
                check_quantized(params, arrays["scales"], bank.sizes, info.bits, what)
                params = decode_packed(params, arrays["scales"], bank.sizes)
            tile.append((arrays["mask"], params))
        counts = tuple(int(mask.sum()) for mask, _ in tile)
        if counts != record.bank_mlps[: len(counts)] or any(
            mask.max(initial=0) > 1 for mask, _ in tile
        ):
            raise ModelFormatError(f"{what}: its block masks disagree with its record")
        for _, params in tile:
            check_params(params, what)
        return tile

    def model(self, cache_bytes: int = 256 << 20) -> PyramidModel:
        """The model in the store, its levels read tile by tile on demand.

        Unfinished tiles have no MLPs: a store that is still being fitted gives the model trained
        so far (``metadata["fit_status"]`` is ``"fitting"``).
        """
        # level j holds about 4**-j of the MLPs (8**-j in 3D): split the budget the same way, so
        # that a full decode of level 0 does not read its tiles again and again
        shares = [4.0**-j for j in range(self.n_levels)]
        levels = [
            StoredLevel(self, j, max(1, int(cache_bytes * share / sum(shares))))
            for j, share in enumerate(shares)
        ]
        metadata = dict(self.header.metadata)
        metadata["fit_status"] = self.header.status
        return PyramidModel(self.layout, self.config, levels, metadata)


# ------------------------------------------------------------------------------- save / load
def is_model_store(path: str | PathLike[str]) -> bool:
    """Whether ``path`` looks like a model store (its root attributes name the format)."""
    attributes = Path(os.fspath(path)) / ".zattrs"
    if not attributes.is_file() or attributes.is_symlink():
        return False
    try:
        return read_json(attributes, str(path)).get("format") == FORMAT_NAME
    except (ModelFormatError, AttributeError):
        return False


def check_overwritable(target: Path) -> None:
    """Refuse to replace anything at ``target`` but a model store or an empty directory."""
    if not os.path.lexists(target):
        return
    if not target.is_dir() or target.is_symlink():
        raise ModelFormatError(
            f"cannot write a model to {target}: something that is not a model store exists there "
            f"(a store is a directory; use a name ending in {SUFFIX!r})"
        )
    if any(target.iterdir()) and not is_model_store(target):
        raise ModelFormatError(
            f"cannot write a model to {target}: the directory exists and is not a napari-miner "
            "model, so it is not overwritten; choose another path or remove it"
        )


def _target(path: str | PathLike[str]) -> Path:
    target = Path(os.fspath(path)).expanduser()
    if target.name in ("", ".", ".."):
        raise ModelFormatError(f"{os.fspath(path)!r} is not a valid model path: name the store")
    target = target.parent.resolve() / target.name
    if target.is_symlink():
        target = target.resolve()
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"cannot save the model to {target}: directory {target.parent} does not exist"
        )
    return target


def save_model(model: PyramidModel, path: str | PathLike[str]) -> None:
    """Write ``model`` to a new store at ``path``, atomically.

    The store is written to a temporary sibling and renamed into place (a previous model there is
    deleted only once replaced), under the path's lock, so a second writer gets
    :class:`~napari_miner.core.errors.StoreLockedError`. Leftovers of earlier interrupted saves
    of the path are removed. A model read from a store is copied tile by tile, each tile verified.

    Raises
    ------
    ModelFormatError
        If ``path`` holds something that is not a model store (it is never overwritten), or a
        tile of the model's own store is damaged.
    StoreLockedError
        If another process writes ``path``.
    FileNotFoundError
        If the parent directory of ``path`` does not exist.
    """
    if not isinstance(model, PyramidModel):
        raise TypeError(f"expected a fitted model, got {type(model).__name__}")
    target = _target(path)
    check_overwritable(target)
    if any(isinstance(level, StoredLevel) and level.store.path == target for level in model.levels):
        if all(
            isinstance(level, StoredLevel) and level.store.path == target for level in model.levels
        ):
            return  # the model already lives there
        raise ModelFormatError(f"cannot save over {target}: the model is read from it")
    with PathLock(target).acquire("saved"), atomic_directory(target) as temporary:
        write_model(model, temporary)


def write_model(model: PyramidModel, directory: Path) -> ModelStore:
    """Write every level of ``model`` into a new complete store in ``directory``, tile by tile.

    Each level is stored with its banks' quantisation (integers and scales where its weights lie
    on a grid, float32 otherwise).
    """
    metadata = {k: v for k, v in model.metadata.items() if k != "fit_status"}
    ones = [(1,) * len(model.layout.spatial_shape)] * model.n_levels
    bits = [getattr(level, "bits", None) for level in model.levels]
    headers = level_headers(model.layout, model.config, ones, bits)
    tiles = [store_tile_blocks(info) for info in headers]
    store = ModelStore.create(directory, model.layout, model.config, tiles, metadata, bits=bits)
    store.durable = False  # the whole store is flushed before it is renamed into place
    store.compact = True
    for j, level in enumerate(model.levels):
        info = store.header.levels[j]
        banks = (level, *level.extra)
        if len(banks) > len(info.banks):
            raise ModelFormatError(f"level {j} has more banks than its config allows")
        for index in store.tiles(j):
            tile = []
            for k, bank_info in enumerate(info.banks):
                region = tile_blocks_region(bank_info.grid, bank_info.tile_blocks, index)
                shape = tuple(r.stop - r.start for r in region)
                width = bank_info.params_per_mlp
                params = np.zeros((int(np.prod(shape)), width), "<f4")
                present = torch.zeros(params.shape[0], dtype=torch.bool)
                if k < len(banks):
                    present, weights, biases = banks[k].gather(_flat_ids(bank_info.grid, region))
                    if weights[0].shape[0]:
                        params[present.numpy()] = pack_bank(weights, biases).numpy()
                mask = present.numpy().astype(np.uint8).reshape(shape)
                tile.append((mask, params.reshape(*shape, width)))
            store.write_tile(j, index, tile, {})
        store.update_level(j, stats=dict(level.stats))
    store.update_attributes(status="complete")
    return store


def _flat_ids(grid: BlockGrid, region: Sequence[slice]) -> torch.Tensor:
    """Flat (C-order) indices of the blocks of a block-grid region."""
    axes = [torch.arange(r.start, r.stop) for r in region]
    flat = torch.zeros([len(a) for a in axes], dtype=torch.long)
    for axis, coordinate in enumerate(torch.meshgrid(*axes, indexing="ij")):
        flat = flat * grid.grid_shape[axis] + coordinate
    return flat.reshape(-1)


def load_model(path: str | PathLike[str]) -> PyramidModel:
    """Open a model store of any released format, validated, its levels read on demand.

    Raises
    ------
    ModelFormatError
        If the store is missing, not a model, of a newer format, incomplete or damaged.
    """
    listing = open_listing(path)
    attributes = root_attributes(listing)
    if attributes["format_version"] < FORMAT_VERSION:
        from .legacy import load_legacy

        return load_legacy(listing, attributes)
    return ModelStore.from_listing(listing, attributes).model()
