"""Read-only support for the model stores of earlier releases (format versions 1 and 2).

* Format 1 (napari-miner 0.1, ``MinerModel.save``): per level, ``block_ids`` (n,) int64 and the
  layers' ``weight_{l}`` (n, out, in) / ``bias_{l}`` (n, out, 1) float32, with a SHA-256 of every
  array in the root attributes (``arrays``). Read whole, checked, verified.
* Format 2 (napari-miner 0.1, out-of-core fits, ``storage = "tiled"``): per level, a block ``mask``
  and dense ``weight_{l}`` / ``bias_{l}`` arrays chunked by training tile, and ``tiles`` records (the
  same 96 bytes as format 3's, with the SHA-256 of the mask, weights and biases). Read tile by tile.

Both get the checks of :mod:`napari_miner.io.schema` (no links or special files, attributes, array
metadata against the config, bounded chunk reads). Saving such a model writes the current format.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..core.blocks import BlockGrid
from ..core.config import MinerConfig
from ..core.errors import ModelFormatError
from ..core.layout import InputLayout
from ..core.mlp_bank import layer_sizes, pack_bank
from ..core.model import LevelParams, PyramidModel
from ..core.pyramid import level_shapes
from ..core.tiles import tile_blocks_region, tile_grid
from .chunks import ArraySpec, read_chunk, read_file, read_json
from .records import TileRecord, records_stats
from .schema import (
    MAX_PARAM,
    RECORD_BYTES_V2,
    BankHeader,
    LevelHeader,
    StoreListing,
    check_params,
    from_json,
    parse_config,
    parse_layout,
)
from .stored_level import StoredLevel

__all__ = ["load_legacy"]

MAX_COMPRESSION = 256
"""A format-1 store may declare at most this many times its files' bytes (trained float32 weights
compress less than 2:1; this refuses tiny stores that claim huge arrays)."""
MAX_LEGACY_CHUNK_BYTES = 256 << 20


def load_legacy(listing: StoreListing, attributes: dict[str, Any]) -> PyramidModel:
    """The model in a format-1 or format-2 store (read-only, validated)."""
    where = str(listing.root)
    values = attributes.get("config")
    if isinstance(values, dict):  # settings added since: what these releases did
        values = {"weight_bits": None, "max_splits": 0, **values}
    config = parse_config(values, where)
    layout = parse_layout(attributes.get("layout"), config, where)
    metadata = attributes.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ModelFormatError(f"{where}: the 'metadata' attribute is not a JSON object")
    metadata = from_json(metadata)
    levels_info = attributes.get("levels")
    if not isinstance(levels_info, list) or len(levels_info) != config.n_levels:
        raise ModelFormatError(
            f"{where}: the 'levels' attribute must list {config.n_levels} levels"
        )
    if attributes["format_version"] == 1:
        levels = _format1_levels(listing, attributes, config, layout, levels_info)
        return PyramidModel(layout, config, levels, metadata)
    if attributes.get("storage") != "tiled":
        raise ModelFormatError(f"{where}: a format-2 store must have storage 'tiled'")
    store = TiledStoreV2(listing, attributes, config, layout, levels_info)
    metadata["fit_status"] = store.status
    levels = [StoredLevel(store, j, (256 << 20) // config.n_levels) for j in range(config.n_levels)]
    return PyramidModel(layout, config, levels, metadata)


def _array(listing: StoreListing, name: str, shape: Sequence[int], dtype: str) -> ArraySpec:
    """The checked metadata of one array of a legacy store."""
    where = f"{listing.root}: array {name}"
    if not listing.has(f"{name}/.zarray"):
        raise ModelFormatError(f"{where} is missing (incomplete or damaged store)")
    spec = ArraySpec.from_zarray(read_json(listing.root / name / ".zarray", where), where)
    if spec.shape != tuple(shape) or spec.dtype != dtype:
        raise ModelFormatError(
            f"{where} has shape {list(spec.shape)} and dtype {spec.dtype}, expected {list(shape)} "
            f"and {dtype}"
        )
    if spec.chunk_bytes > MAX_LEGACY_CHUNK_BYTES:
        raise ModelFormatError(f"{where} has chunks of {spec.chunk_bytes} bytes: too large")
    return spec


def _digest(arrays: Sequence[np.ndarray]) -> bytes:
    digest = hashlib.sha256()
    for array in arrays:
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        digest.update(data.view(np.uint8).reshape(-1))
    return digest.digest()


# ----------------------------------------------------------------------------------- format 1
def _format1_levels(
    listing: StoreListing,
    attributes: dict[str, Any],
    config: MinerConfig,
    layout: InputLayout,
    levels_info: list[Any],
) -> list[LevelParams]:
    where = str(listing.root)
    manifest = attributes.get("arrays")
    if not isinstance(manifest, dict):
        raise ModelFormatError(f"{where}: the 'arrays' attribute is missing or not a JSON object")
    shapes = level_shapes(layout.spatial_shape, config.n_levels)
    specs: dict[str, ArraySpec] = {}
    for j, (info, shape) in enumerate(zip(levels_info, shapes, strict=True)):
        if not isinstance(info, dict) or info.get("shape") != list(shape):
            raise ModelFormatError(f"{where}: level {j} does not have shape {list(shape)}")
        grid = BlockGrid(shape, config.block_size)
        expected = manifest.get(f"levels/{j}/block_ids")
        n = expected.get("shape", [None])[0] if isinstance(expected, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= grid.n_blocks:
            raise ModelFormatError(f"{where}: level {j} has an invalid number of MLPs {n!r}")
        sizes = layer_sizes(grid.ndim, config.width_at(j), config.hidden_layers, layout.n_channels)
        wanted = {f"levels/{j}/block_ids": ((n,), "<i8")}
        for k, (n_out, n_in) in enumerate(sizes):
            wanted[f"levels/{j}/weight_{k}"] = ((n, n_out, n_in), "<f4")
            wanted[f"levels/{j}/bias_{k}"] = ((n, n_out, 1), "<f4")
        for name, (array_shape, dtype) in wanted.items():
            entry = manifest.get(name)
            if not isinstance(entry, dict) or entry.get("shape") != list(array_shape):
                raise ModelFormatError(
                    f"{where}: array {name} is not listed as {list(array_shape)}"
                )
            specs[name] = _array(listing, name, array_shape, dtype)
    declared = sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in specs.values())
    stored = sum(size for path, size in listing.files.items() if path.startswith("levels/"))
    if declared > MAX_COMPRESSION * stored + (1 << 20):
        raise ModelFormatError(
            f"{where}: the arrays declare {declared} bytes but the store holds {stored}: damaged"
        )
    arrays = {
        name: _read_whole(listing, name, spec, manifest[name]) for name, spec in specs.items()
    }
    levels = []
    for j, shape in enumerate(shapes):
        grid = BlockGrid(shape, config.block_size)
        ids = arrays[f"levels/{j}/block_ids"]
        if ids.size and (ids[0] < 0 or ids[-1] >= grid.n_blocks or np.any(np.diff(ids) <= 0)):
            raise ModelFormatError(f"{where}: level {j} block ids are not sorted, unique, in range")
        n_layers = config.hidden_layers + 2
        stats = levels_info[j].get("stats", {})
        levels.append(
            LevelParams(
                grid,
                torch.from_numpy(ids),
                [torch.from_numpy(arrays[f"levels/{j}/weight_{k}"]) for k in range(n_layers)],
                [torch.from_numpy(arrays[f"levels/{j}/bias_{k}"]) for k in range(n_layers)],
                from_json(stats) if isinstance(stats, dict) else {},
            )
        )
    return levels


def _read_whole(listing: StoreListing, name: str, spec: ArraySpec, entry: dict) -> np.ndarray:
    """A whole format-1 array, read chunk by chunk and checked against its SHA-256."""
    where = f"{listing.root}: array {name}"
    out = np.empty(spec.shape, dtype=np.dtype(spec.dtype).newbyteorder("="))
    for index in np.ndindex(*spec.chunk_grid):
        region = tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(index, spec.chunks, spec.shape, strict=True)
        )
        out[region] = read_chunk(listing.root / name, spec, index, where, missing_is_zero=True)
    if hashlib.sha256(_le_bytes(out)).hexdigest() != entry.get("sha256"):
        raise ModelFormatError(
            f"{where} does not match its checksum: the store is incomplete or corrupted"
        )
    if out.dtype.kind == "f" and not bool((np.abs(out) <= MAX_PARAM).all()):
        raise ModelFormatError(f"{where} holds non-finite or absurdly large values")
    return out


def _le_bytes(array: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return data.view(np.uint8).reshape(-1)


# ----------------------------------------------------------------------------------- format 2
class TiledStoreV2:
    """A format-2 (tiled) store, read tile by tile (a ``TileStore`` for :class:`StoredLevel`)."""

    def __init__(
        self,
        listing: StoreListing,
        attributes: dict[str, Any],
        config: MinerConfig,
        layout: InputLayout,
        levels_info: list[Any],
    ) -> None:
        self.path = listing.root
        self.config, self.layout = config, layout
        where = str(listing.root)
        self.status = attributes.get("status")
        if self.status not in ("fitting", "complete"):
            raise ModelFormatError(
                f"{where}: status {self.status!r} is not 'fitting' or 'complete'"
            )
        self._levels: list[LevelHeader] = []
        self._specs: list[dict[str, ArraySpec]] = []
        self._records: list[dict[tuple[int, ...], TileRecord]] = []
        shapes = level_shapes(layout.spatial_shape, config.n_levels)
        for j, (info, shape) in enumerate(zip(levels_info, shapes, strict=True)):
            grid = BlockGrid(shape, config.block_size)
            tiles = info.get("tile_blocks") if isinstance(info, dict) else None
            if not (
                isinstance(tiles, list)
                and len(tiles) == grid.ndim
                and all(isinstance(t, int) and not isinstance(t, bool) for t in tiles)
                and all(1 <= t <= g for t, g in zip(tiles, grid.grid_shape, strict=True))
            ):
                raise ModelFormatError(f"{where}: level {j} has invalid tile_blocks {tiles!r}")
            sizes = layer_sizes(
                grid.ndim, config.width_at(j), config.hidden_layers, layout.n_channels
            )
            stats = from_json(info.get("stats", {}))
            bank = BankHeader("main", grid, tuple(tiles), sizes)
            header = LevelHeader(
                grid, tuple(tiles), [bank], stats=stats if isinstance(stats, dict) else {}
            )
            specs = {"mask": _array(listing, f"levels/{j}/mask", grid.grid_shape, "|u1")}
            for k, (n_out, n_in) in enumerate(sizes):
                for kind, tail in (("weight", (n_out, n_in)), ("bias", (n_out, 1))):
                    name = f"{kind}_{k}"
                    specs[name] = _array(
                        listing, f"levels/{j}/{name}", (*grid.grid_shape, *tail), "<f4"
                    )
            tgrid = tile_grid(grid, tiles)
            specs["tiles"] = _array(listing, f"levels/{j}/tiles", (*tgrid, RECORD_BYTES_V2), "|u1")
            self._levels.append(header)
            self._specs.append(specs)
            self._records.append(self._read_records(listing, j, header))

    def _read_records(
        self, listing: StoreListing, level: int, header: LevelHeader
    ) -> dict[tuple[int, ...], TileRecord]:
        records = {}
        prefix = f"levels/{level}/tiles/"
        for name in listing.files:
            parts = name[len(prefix) :].split(".") if name.startswith(prefix) else []
            if len(parts) != header.grid.ndim + 1 or not all(
                p.isascii() and p.isdigit() for p in parts
            ):
                continue
            index = tuple(int(p) for p in parts[:-1])
            if any(i >= g for i, g in zip(index, header.tile_grid, strict=True)):
                continue
            what = f"{listing.root}: record {name}"
            raw = read_file(listing.root / name, RECORD_BYTES_V2, what) or b""
            if self.status != "complete" and TileRecord.is_crash_artefact(raw, RECORD_BYTES_V2):
                continue  # an unfinished tile
            try:
                records[index] = TileRecord.decode(raw, RECORD_BYTES_V2)
            except ValueError as error:
                raise ModelFormatError(
                    f"{listing.root}: the record of tile {index} of level {level} is damaged: "
                    f"{error}"
                ) from None
        if self.status == "complete" and len(records) != header.n_tiles:
            raise ModelFormatError(
                f"{listing.root}: the store is marked complete but {header.n_tiles - len(records)} "
                f"tiles of level {level} have no record: it is damaged"
            )
        return records

    def banks(self, level: int) -> list[BankHeader]:  # noqa: D102 - see TileStore
        return self._levels[level].banks

    def level_bits(self, level: int) -> int | None:  # noqa: D102
        return None

    def records(self, level: int) -> dict[tuple[int, ...], TileRecord]:  # noqa: D102
        return self._records[level]

    def level_stats(self, level: int) -> dict[str, Any]:  # noqa: D102
        info = self._levels[level]
        if info.stats:
            return dict(info.stats)
        return records_stats(self._records[level], info, self.config.iou_threshold is not None)

    def read_tile(self, level: int, index: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
        """A verified tile: its one bank's mask and MLPs, packed as in format 3."""
        what = f"{self.path}: tile {index} of level {level}"
        specs = self._specs[level]
        base = self.path / "levels" / str(level)
        n_layers = self.config.hidden_layers + 2
        zeros = (0, 0)

        def read(name: str, key: tuple[int, ...]) -> np.ndarray:
            return read_chunk(base / name, specs[name], key, what, missing_is_zero=True)

        mask = read("mask", index)
        weights = [read(f"weight_{k}", (*index, *zeros)) for k in range(n_layers)]
        biases = [read(f"bias_{k}", (*index, *zeros)) for k in range(n_layers)]
        record = self._records[level][index]
        if _digest([mask, *weights, *biases]) != record.digest:
            raise ModelFormatError(f"{what} does not match its checksum: the store is damaged")
        if int(mask.sum()) != record.n_mlps or mask.max(initial=0) > 1:
            raise ModelFormatError(f"{what}: its block mask disagrees with its record")
        header = self._levels[level]
        region = tile_blocks_region(header.grid, header.tile_blocks, index)
        shape = tuple(r.stop - r.start for r in region)
        n = math.prod(shape)
        packed = pack_bank(
            [torch.from_numpy(np.ascontiguousarray(w).reshape(n, *w.shape[-2:])) for w in weights],
            [torch.from_numpy(np.ascontiguousarray(b).reshape(n, *b.shape[-2:])) for b in biases],
        ).numpy()
        check_params(packed, what)
        return [(mask, packed.reshape(*shape, -1))]
