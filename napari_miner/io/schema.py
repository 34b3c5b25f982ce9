"""The schema of model stores, checked every time a store is opened.

A store is untrusted input (a file someone sent, a hand-edited directory, a half-written fit). Before
anything of it is used, :func:`open_listing` and :func:`parse_header` check:

* the directory: it exists, and no member is a symbolic link or a special file (so nothing outside
  the store is ever read, copied or written through it, and no read can block on a FIFO);
* the root attributes: format name and version, every attribute's type and range (config, layout,
  levels, metadata), non-finite numbers only where allowed;
* the arrays: for every level, the ``.zarray`` of ``mask``, ``params`` and ``records`` must state
  exactly the shape, chunks and dtype that the config and layout imply, and a whitelisted compressor
  (:mod:`napari_miner.io.chunks`);
* the size: level 0 may have at most :data:`~napari_miner.core.config.MAX_BLOCKS` blocks (the
  config's own rule; the active-blocks overlay holds one byte per level-0 block), tiles at most
  :data:`MAX_TILE_BLOCKS` blocks;
* the tile records (:func:`read_records`): their file names, sizes and fields; a store marked
  complete must have every tile's record, and every recorded tile must have its chunk files;
* a tile's data when it is read (:func:`check_params`): its checksum, and finite weights of sane
  magnitude (so that decoding never yields NaN or infinite values).

Nothing is allocated in proportion to what the attributes claim: only to what the directory holds,
and to one tile at a time. Every problem is a :class:`~napari_miner.core.errors.ModelFormatError`
naming the store and what is wrong.

Format version 3 (written since napari-miner 0.2), a zarr v2 group::

    model.miner.zarr/
        .zgroup, .zattrs        format, format_version, status ("fitting" | "complete"), config,
                                layout, metadata, input, levels (per level: tile_blocks,
                                prune_threshold, n_active, stats), fit (training plan)
        levels/{j}/mask         (*grid) uint8, 1 where a block has an MLP; chunks = one tile
        levels/{j}/params       (*grid, P_j) float32, every block's MLP packed (see
                                napari_miner.core.mlp_bank.pack_bank); chunks = one tile
        levels/{j}/records      (*tile grid, 96) uint8, uncompressed, one chunk per tile:
                                SHA-256 of the tile's mask and params, then 8 float64 fields
                                (done, n_mlps, sse, count, steps, elapsed_s, intersection, union)

A tile's record is written after its data, so a tile without a record is unfinished (a fit that is
still running or was interrupted); a finished tile's data is verified against its checksum when read.
In a store being fitted, a record that is shorter than 96 bytes or all zeros (what a crash can leave
of a file being written) also marks an unfinished tile; any other invalid record is damage.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.blocks import BlockGrid
from ..core.config import MinerConfig
from ..core.errors import MinerError, ModelFormatError
from ..core.layout import InputLayout
from ..core.metrics import psnr_from_mse
from ..core.mlp_bank import layer_sizes, params_per_mlp
from ..core.pyramid import level_shapes
from ..core.tiles import tile_grid
from .chunks import ArraySpec, default_compressor, read_file, read_json

__all__ = [
    "FORMAT_NAME",
    "check_params",
    "parse_attributes",
    "FORMAT_VERSION",
    "SUFFIX",
    "StoreHeader",
    "open_listing",
    "parse_header",
    "read_records",
]

FORMAT_NAME = "napari-miner.model"
"""Value of the ``format`` attribute of every model store."""

FORMAT_VERSION = 3
"""The store format version written; versions 1 and 2 are read (:mod:`napari_miner.io.legacy`)."""

SUFFIX = ".miner.zarr"
"""Suffix of model stores."""

STATUSES = ("fitting", "complete")
RECORD_FIELDS = ("done", "n_mlps", "sse", "count", "steps", "elapsed_s", "intersection", "union")
DIGEST_BYTES = 32
RECORD_BYTES = DIGEST_BYTES + 8 * len(RECORD_FIELDS)
MAX_TILE_BLOCKS = 1 << 16
"""Most blocks a tile (one chunk) may hold."""
MAX_CHUNK_BYTES = 64 << 20
"""Largest decoded chunk of a store (a tile's packed MLPs)."""
MAX_PARAM = 1e12
"""Largest magnitude of a stored weight or bias. Trained SIREN weights are many orders of
magnitude smaller; this bound keeps every sum of a decode finite in float32."""

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# ------------------------------------------------------------------------------ the directory
@dataclass(frozen=True)
class StoreListing:
    """A store directory and every regular file in it (relative POSIX path -> size in bytes)."""

    root: Path
    files: dict[str, int]

    def has(self, relative: str) -> bool:
        """Whether the store holds this file."""
        return relative in self.files


def open_listing(path: str | os.PathLike[str]) -> StoreListing:
    """List a store directory, refusing links and special files anywhere inside it.

    The path itself may be a link to a directory (it is resolved once, here).
    """
    location = Path(os.fspath(path)).expanduser()
    if not os.path.lexists(location):
        hint = ""
        backups = sorted(location.parent.glob(f".{location.name}.old-*"))
        if backups:
            hint = (
                f"; a save to it was interrupted and the previous model is in {backups[-1]} "
                "(rename it back)"
            )
        raise ModelFormatError(f"no model store at {location}: the path does not exist{hint}")
    if not location.is_dir():
        raise ModelFormatError(
            f"{location} is not a model store: a napari-miner model is a directory (`*{SUFFIX}`)"
        )
    root = location.resolve()
    files: dict[str, int] = {}
    pending = [("", root)]
    while pending:
        prefix, directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as error:
            raise ModelFormatError(f"{location}: cannot list {directory}: {error}") from error
        for entry in entries:
            relative = prefix + entry.name
            if entry.is_symlink():
                raise ModelFormatError(
                    f"{location}: {relative} is a symbolic link; a model store holds only its own "
                    "files (links could make it read or write outside the store)"
                )
            if entry.is_dir(follow_symlinks=False):
                pending.append((relative + "/", Path(entry.path)))
            elif entry.is_file(follow_symlinks=False):
                files[relative] = entry.stat(follow_symlinks=False).st_size
            else:
                raise ModelFormatError(f"{location}: {relative} is not a regular file")
    return StoreListing(root, files)


def root_attributes(listing: StoreListing) -> dict[str, Any]:
    """The store's root attributes (a JSON object), with the format name and version checked."""
    where = str(listing.root)
    if not listing.has(".zattrs"):
        kind = "a zarr v3 group" if listing.has("zarr.json") else "no zarr v2 group attributes"
        raise ModelFormatError(f"{where} is not a napari-miner model store ({kind})")
    attributes = read_json(listing.root / ".zattrs", f"{where}: .zattrs")
    if not isinstance(attributes, dict):
        raise ModelFormatError(f"{where}: the store's attributes are not a JSON object")
    name = attributes.get("format")
    if name != FORMAT_NAME:
        found = "no 'format' attribute" if name is None else f"format {name!r}"
        raise ModelFormatError(
            f"{where} is a zarr group but not a napari-miner model ({found}, expected "
            f"{FORMAT_NAME!r})"
        )
    version = attributes.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFormatError(f"{where}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{where} was saved by a newer napari-miner (model format version {version}; this "
            f"version reads up to {FORMAT_VERSION}): upgrade napari-miner to open it"
        )
    return attributes


# ------------------------------------------------------------------------------- attributes
def to_json(value: Any, what: str) -> Any:
    """Plain JSON copy of ``value`` (numpy scalars converted, non-finite floats as strings)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ModelFormatError(f"cannot store {what}: key {key!r} is not a string")
            out[key] = to_json(item, what)
        return out
    if isinstance(value, list | tuple):
        return [to_json(item, what) for item in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist(), what)
    raise ModelFormatError(
        f"cannot store {what}: {type(value).__name__} value {value!r} is not plain JSON"
    )


def from_json(value: Any) -> Any:
    """Inverse of :func:`to_json` (the strings of non-finite floats become floats again)."""
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


def parse_config(values: Any, where: str) -> MinerConfig:
    """The config attribute as a :class:`MinerConfig` (raises :class:`ModelFormatError`)."""
    if not isinstance(values, dict):
        raise ModelFormatError(f"{where}: the 'config' attribute is missing or not a JSON object")
    try:
        return MinerConfig.from_dict(values)
    except (MinerError, TypeError, ValueError) as error:
        raise ModelFormatError(f"{where}: invalid config attribute: {error}") from None


def parse_layout(values: Any, config: MinerConfig, where: str) -> InputLayout:
    """The layout attribute, checked against the config (raises :class:`ModelFormatError`)."""
    try:
        layout = InputLayout.from_dict(values)
        config.check_shape(layout.spatial_shape)
    except (MinerError, TypeError, ValueError) as error:
        raise ModelFormatError(f"{where}: invalid layout attribute: {error}") from None
    return layout


def check_params(params: np.ndarray, what: str) -> None:
    """Refuse packed MLPs that are not finite or larger than :data:`MAX_PARAM` in magnitude."""
    if params.size and not bool((np.abs(params) <= MAX_PARAM).all()):
        raise ModelFormatError(
            f"{what} holds non-finite or absurdly large weights: the store is damaged"
        )


def _json_object(value: Any, what: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelFormatError(f"{where}: the {what!r} attribute is not a JSON object")
    return from_json(value)


def _number_or_none(value: Any, what: str, where: str) -> float | None:
    value = from_json(value)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        raise ModelFormatError(f"{where}: {what} must be a number, got {value!r}")
    return float(value)


@dataclass
class LevelHeader:
    """What the attributes say about one level (all of it checked)."""

    grid: BlockGrid
    tile_blocks: tuple[int, ...]
    params_per_mlp: int
    prune_threshold: float | None = None
    n_active: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def tile_grid(self) -> tuple[int, ...]:
        """Tiles along each axis."""
        return tile_grid(self.grid, self.tile_blocks)

    @property
    def n_tiles(self) -> int:
        """Tiles of the level."""
        return math.prod(self.tile_grid)

    def specs(self) -> dict[str, ArraySpec]:
        """The arrays of the level, as the store must hold them."""
        grid, tiles, p = self.grid.grid_shape, self.tile_blocks, self.params_per_mlp
        ones = (1,) * len(grid)
        compressor = default_compressor()
        return {
            "mask": ArraySpec(grid, tiles, "|u1", compressor),
            "params": ArraySpec((*grid, p), (*tiles, p), "<f4", compressor),
            "records": ArraySpec((*self.tile_grid, RECORD_BYTES), (*ones, RECORD_BYTES), "|u1"),
        }


@dataclass
class StoreHeader:
    """The validated root attributes of a format-3 store."""

    root: Path
    status: str
    config: MinerConfig
    layout: InputLayout
    metadata: dict[str, Any]
    input: dict[str, Any] | None
    levels: list[LevelHeader]
    fit: dict[str, Any] | None
    attributes: dict[str, Any]

    @property
    def complete(self) -> bool:
        """Whether the fit that wrote the store finished."""
        return self.status == "complete"


def level_headers(
    layout: InputLayout, config: MinerConfig, tile_blocks: list[tuple[int, ...]]
) -> list[LevelHeader]:
    """The level headers of a new store (no threshold, no stats yet)."""
    shapes = level_shapes(layout.spatial_shape, config.n_levels)
    ndim = len(layout.spatial_shape)
    return [
        LevelHeader(
            BlockGrid(shape, config.block_size),
            tuple(int(t) for t in tiles),
            params_per_mlp(
                layer_sizes(ndim, config.width_at(j), config.hidden_layers, layout.n_channels)
            ),
        )
        for j, (shape, tiles) in enumerate(zip(shapes, tile_blocks, strict=True))
    ]


def parse_header(listing: StoreListing, attributes: dict[str, Any]) -> StoreHeader:
    """Check the attributes of a format-3 store, and that its arrays are what they imply."""
    header = parse_attributes(listing.root, attributes)
    for j, level in enumerate(header.levels):
        for name, spec in level.specs().items():
            _check_array(listing, f"levels/{j}/{name}", spec)
    return header


def parse_attributes(root: Path, attributes: dict[str, Any]) -> StoreHeader:
    """Check the root attributes of a format-3 store (types, ranges, consistency)."""
    where = str(root)
    status = attributes.get("status")
    if status not in STATUSES:
        raise ModelFormatError(f"{where}: status {status!r} is not one of {STATUSES}")
    config = parse_config(attributes.get("config"), where)
    layout = parse_layout(attributes.get("layout"), config, where)
    metadata = _json_object(attributes.get("metadata", {}), "metadata", where)
    input_info = attributes.get("input")
    if input_info is not None:
        input_info = _json_object(input_info, "input", where)
    fit = attributes.get("fit")
    if fit is not None:
        fit = _json_object(fit, "fit", where)
    raw_levels = attributes.get("levels")
    if not isinstance(raw_levels, list) or len(raw_levels) != config.n_levels:
        raise ModelFormatError(
            f"{where}: the 'levels' attribute must list {config.n_levels} levels (n_levels)"
        )
    tiles = [_tile_blocks(info, j, config, where) for j, info in enumerate(raw_levels)]
    levels = level_headers(layout, config, tiles)
    for j, (level, info) in enumerate(zip(levels, raw_levels, strict=True)):
        _check_level(level, info, j, where)
    return StoreHeader(root, status, config, layout, metadata, input_info, levels, fit, attributes)


def _tile_blocks(info: Any, j: int, config: MinerConfig, where: str) -> tuple[int, ...]:
    if not isinstance(info, dict):
        raise ModelFormatError(f"{where}: level {j} is not a JSON object")
    tiles = info.get("tile_blocks")
    if not (isinstance(tiles, list) and tiles and all(_is_count(t) and t >= 1 for t in tiles)):
        raise ModelFormatError(
            f"{where}: level {j} tile_blocks {tiles!r} must be positive integers"
        )
    return tuple(tiles)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_level(level: LevelHeader, info: dict[str, Any], j: int, where: str) -> None:
    grid = level.grid
    if len(level.tile_blocks) != grid.ndim or any(
        t > g for t, g in zip(level.tile_blocks, grid.grid_shape, strict=True)
    ):
        raise ModelFormatError(
            f"{where}: level {j} tile_blocks {list(level.tile_blocks)} do not fit its block grid "
            f"{list(grid.grid_shape)}"
        )
    blocks = math.prod(level.tile_blocks)
    if blocks > MAX_TILE_BLOCKS or blocks * level.params_per_mlp * 4 > MAX_CHUNK_BYTES:
        raise ModelFormatError(f"{where}: level {j} tiles of {list(level.tile_blocks)} are too big")
    level.prune_threshold = _number_or_none(
        info.get("prune_threshold"), f"level {j} threshold", where
    )
    n_active = info.get("n_active")
    if n_active is not None and not (_is_count(n_active) and n_active <= grid.n_blocks):
        raise ModelFormatError(f"{where}: level {j} n_active {n_active!r} is out of range")
    level.n_active = n_active
    level.stats = _json_object(info.get("stats", {}), f"level {j} stats", where)


def _check_array(listing: StoreListing, name: str, expected: ArraySpec) -> None:
    where = f"{listing.root}: array {name}"
    if not listing.has(f"{name}/.zarray"):
        raise ModelFormatError(f"{where} is missing (incomplete or damaged store)")
    found = ArraySpec.from_zarray(read_json(listing.root / name / ".zarray", where), where)
    if (found.shape, found.chunks, found.dtype) != (
        expected.shape,
        expected.chunks,
        expected.dtype,
    ):
        raise ModelFormatError(
            f"{where} has shape {list(found.shape)}, chunks {list(found.chunks)} and dtype "
            f"{found.dtype}; the store's config implies {list(expected.shape)}, "
            f"{list(expected.chunks)} and {expected.dtype}"
        )
    if (found.compressor is None) != (expected.compressor is None):
        raise ModelFormatError(f"{where} is {'not ' if found.compressor is None else ''}compressed")


# ---------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class TileRecord:
    """A finished tile's record: the checksum of its data, and its statistics."""

    digest: bytes
    n_mlps: int
    sse: float
    count: float
    steps: int
    elapsed_s: float
    intersection: float
    union: float

    @staticmethod
    def is_crash_artefact(raw: bytes) -> bool:
        """Whether ``raw`` is what a crash can leave of a record being written (short or zeros)."""
        return len(raw) < RECORD_BYTES or not any(raw)

    @classmethod
    def decode(cls, raw: bytes) -> TileRecord:
        """Parse the bytes of a record (raises ``ValueError`` for an invalid one)."""
        if len(raw) != RECORD_BYTES:
            raise ValueError(f"{len(raw)} bytes instead of {RECORD_BYTES}")
        values = np.frombuffer(raw[DIGEST_BYTES:], dtype="<f8")
        fields = dict(zip(RECORD_FIELDS, (float(v) for v in values), strict=True))
        if not all(math.isfinite(v) and v >= 0 for v in fields.values()):
            raise ValueError("a field is negative or not finite")
        if fields["done"] != 1.0:
            raise ValueError("not marked done")
        for name in ("n_mlps", "steps"):
            if fields[name] != int(fields[name]):
                raise ValueError(f"{name} is not an integer")
        if not fields["intersection"] <= fields["union"] <= max(fields["count"], 0.0):
            raise ValueError("inconsistent occupancy counts")
        return cls(
            raw[:DIGEST_BYTES], int(fields["n_mlps"]), fields["sse"], fields["count"],
            int(fields["steps"]), fields["elapsed_s"], fields["intersection"], fields["union"],
        )  # fmt: skip

    def encode(self) -> bytes:
        """The record's bytes (checksum first, then the fields)."""
        values = [
            1.0, self.n_mlps, self.sse, self.count, self.steps, self.elapsed_s,
            self.intersection, self.union,
        ]  # fmt: skip
        return self.digest + np.asarray(values, dtype="<f8").tobytes()


def read_records(
    listing: StoreListing, header: StoreHeader, level: int
) -> dict[tuple[int, ...], TileRecord]:
    """The records of the finished tiles of ``level``, each checked, with its chunk files present.

    In a complete store every tile must have one. A record that cannot be parsed is an error,
    except in a store being fitted, where a record that a crash could have left (shorter than a
    record, or zeros) marks an unfinished tile.
    """
    where = str(listing.root)
    info = header.levels[level]
    grid_shape = info.tile_grid
    prefix = f"levels/{level}/records/"
    records: dict[tuple[int, ...], TileRecord] = {}
    for name in listing.files:
        if not name.startswith(prefix) or name == prefix + ".zarray":
            continue
        key = name[len(prefix) :]
        index = _record_index(key, grid_shape)
        if index is None:
            if key.startswith(".zattrs") or ".tmp-" in key:
                continue  # attributes, or a record being written
            raise ModelFormatError(f"{where}: {name} is not a tile record of level {level}")
        raw = read_file(listing.root / name, RECORD_BYTES, f"{where}: record {name}") or b""
        if not header.complete and TileRecord.is_crash_artefact(raw):
            continue  # its writer was interrupted: the tile is unfinished
        try:
            record = TileRecord.decode(raw)
            blocks = math.prod(
                min(t, g - i * t)
                for t, g, i in zip(info.tile_blocks, info.grid.grid_shape, index, strict=True)
            )
            if record.n_mlps > blocks:
                raise ValueError(f"{record.n_mlps} MLPs in a tile of {blocks} blocks")
        except ValueError as error:
            raise ModelFormatError(
                f"{where}: the record of tile {index} of level {level} ({name}) is damaged: {error}"
            ) from None
        chunk = ".".join(map(str, index))
        for array in ("mask", "params"):
            file = f"levels/{level}/{array}/{chunk}" + (".0" if array == "params" else "")
            if not listing.has(file):
                raise ModelFormatError(
                    f"{where}: tile {index} of level {level} is recorded as finished but its "
                    f"{array} chunk {file} is missing (damaged store)"
                )
        records[index] = record
    if header.complete and len(records) != info.n_tiles:
        missing = _first_missing(records, grid_shape)
        raise ModelFormatError(
            f"{where}: the store is marked complete but {info.n_tiles - len(records)} of "
            f"{info.n_tiles} tiles of level {level} have no record"
            + (f" (tile {missing}, {prefix}{'.'.join(map(str, missing))}.0)" if missing else "")
            + ": it is damaged"
        )
    return records


def records_stats(
    records: dict[tuple[int, ...], TileRecord], level: LevelHeader, iou: bool
) -> dict[str, Any]:
    """Statistics of a level summed over its finished tiles' records."""
    values = records.values()
    count = sum(r.count for r in values)
    stats: dict[str, Any] = {
        "n_blocks": level.grid.n_blocks,
        "n_mlps": sum(r.n_mlps for r in values),
        "steps": max((r.steps for r in values), default=0),
        "tiles_done": len(records),
        "n_tiles": level.n_tiles,
    }
    if count:
        stats["psnr"] = psnr_from_mse(sum(r.sse for r in values) / count)
        if iou:
            union = sum(r.union for r in values)
            stats["iou"] = 1.0 if union == 0 else sum(r.intersection for r in values) / union
    return stats


def _record_index(key: str, grid_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    parts = key.split(".")
    if len(parts) != len(grid_shape) + 1 or parts[-1] != "0":
        return None
    if not all(p.isascii() and p.isdigit() for p in parts):
        return None
    index = tuple(int(p) for p in parts[:-1])
    return index if all(0 <= i < g for i, g in zip(index, grid_shape, strict=True)) else None


def _first_missing(
    records: dict[tuple[int, ...], TileRecord], grid_shape: tuple[int, ...]
) -> tuple[int, ...] | None:
    if math.prod(grid_shape) > 1 << 20:
        return None
    for index in np.ndindex(*grid_shape):
        if tuple(int(i) for i in index) not in records:
            return tuple(int(i) for i in index)
    return None
