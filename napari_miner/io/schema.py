"""The schema of model stores, checked every time a store is opened.

A store is untrusted input (a file someone sent, a hand-edited directory, a half-written fit). Before
anything of it is used, :func:`open_listing` and :func:`parse_header` check:

* the directory: it exists, and no member is a symbolic link or a special file (so nothing outside
  the store is ever read, copied or written through it, and no read can block on a FIFO);
* the root attributes: format name and version, every attribute's type and range (config, layout,
  levels, metadata), non-finite numbers only where allowed;
* the arrays: for every level and every bank of it (:mod:`napari_miner.core.banks`), the
  ``.zarray`` of ``mask``, ``params`` (and ``scales`` when the level is quantised) and the level's
  ``records`` must state exactly the shape, chunks and dtype that the config and layout imply, and a
  whitelisted compressor (:mod:`napari_miner.io.chunks`);
* the size: level 0 may have at most :data:`~napari_miner.core.config.MAX_BLOCKS` blocks (the
  config's own rule; the active-blocks overlay holds one byte per level-0 block), tiles at most
  :data:`MAX_TILE_BLOCKS` blocks;
* the tile records (:func:`napari_miner.io.records.read_records`): their file names, sizes and fields; a store marked
  complete must have every tile's record, and every recorded tile must have its chunk files;
* a tile's data when it is read: its checksum; quantised weights whose codes lie on their grid
  and whose scale codes are in range (:func:`check_quantized`); finite weights of sane
  magnitude (:func:`check_params`), so that decoding never yields NaN, infinite or made-up values.

Nothing is allocated in proportion to what the attributes claim: only to what the directory holds,
and to one tile at a time. Every problem is a :class:`~napari_miner.core.errors.ModelFormatError`
naming the store and what is wrong.

Format version 3 (written since napari-miner 0.2), a zarr v2 group::

    model.miner.zarr/
        .zgroup, .zattrs        format, format_version, status ("fitting" | "complete"), config,
                                layout, metadata, input, levels (per level: tile_blocks, bits,
                                prune_threshold, n_active, stats), fit (training plan)
        levels/{j}/{bank}/mask  (*bank grid) uint8, 1 where a block of the bank has an MLP;
                                chunks = one tile. Banks: "main", "lite" (narrow MLPs of smooth
                                blocks), "split1"... (children of split blocks, level 0 only)
        levels/{j}/{bank}/params
                                (*bank grid, P) every block's MLP packed (see
                                napari_miner.core.mlp_bank.pack_bank): float32 when the level's
                                ``bits`` is null, else uint16 zigzag codes of the integer weights
                                (Blosc zstd with bit shuffle); chunks = one tile
        levels/{j}/{bank}/scales
                                (*bank grid, 2 x layers) int16, quantised levels only: the scale
                                code c of every block's layer weights and biases (weight =
                                integer x 2**(c/16); -32768: zeros; see napari_miner.core.quantize)
        levels/{j}/records      (*tile grid, 144) uint8, uncompressed, one chunk per tile:
                                SHA-256 of the tile's arrays, then 8 float64 fields (done, n_mlps,
                                sse, count, steps, elapsed_s, intersection, union) and the MLP count
                                of each of up to 6 banks

A tile's record is written after its data, so a tile without a record is unfinished (a fit that is
still running or was interrupted); a finished tile's data is verified against its checksum when read.
In a store being fitted, a record that is shorter than 144 bytes or all zeros (what a crash can
leave of a file being written) also marks an unfinished tile; any other invalid record is damage.
Stores of formats 1 and 2 (napari-miner 0.1) are read by :mod:`napari_miner.io.legacy`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.banks import level_banks
from ..core.blocks import BlockGrid
from ..core.config import MinerConfig
from ..core.errors import MinerError, ModelFormatError
from ..core.layout import InputLayout
from ..core.mlp_bank import params_per_mlp
from ..core.pyramid import level_shapes
from ..core.quantize import SCALE_CODE_LIMIT, ZERO_SCALE, code_limits
from ..core.tiles import tile_grid
from .chunks import ArraySpec, default_compressor, quantized_compressor, read_json

__all__ = [
    "FORMAT_NAME",
    "check_params",
    "parse_attributes",
    "FORMAT_VERSION",
    "SUFFIX",
    "StoreHeader",
    "open_listing",
    "parse_header",
]

FORMAT_NAME = "napari-miner.model"
"""Value of the ``format`` attribute of every model store."""

FORMAT_VERSION = 3
"""The store format version written; versions 1 and 2 are read (:mod:`napari_miner.io.legacy`)."""

SUFFIX = ".miner.zarr"
"""Suffix of model stores."""

STATUSES = ("fitting", "complete")
RECORD_FIELDS = ("done", "n_mlps", "sse", "count", "steps", "elapsed_s", "intersection", "union")
MAX_BANKS = 6
"""Banks a level may have (main, lite and up to 4 splits): each record counts every bank's MLPs."""
DIGEST_BYTES = 32
RECORD_BYTES = DIGEST_BYTES + 8 * (len(RECORD_FIELDS) + MAX_BANKS)
RECORD_BYTES_V2 = DIGEST_BYTES + 8 * len(RECORD_FIELDS)
"""Records of format 2 (one bank, no per-bank counts)."""
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


def check_quantized(
    codes: np.ndarray, scales: np.ndarray, sizes: list[tuple[int, int]], bits: int, what: str
) -> None:
    """Refuse quantised MLPs whose codes exceed their layer's grid or whose scales are invalid."""
    if codes.size and bool((codes.reshape(-1, codes.shape[-1]) > code_limits(sizes, bits)).any()):
        raise ModelFormatError(
            f"{what} holds integer weights outside their {bits}-bit grid: the store is damaged"
        )
    valid = (np.abs(scales.astype(np.int64)) <= SCALE_CODE_LIMIT) | (scales == ZERO_SCALE)
    if not bool(valid.all()):
        raise ModelFormatError(
            f"{what} holds weight scale codes out of range: the store is damaged"
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


@dataclass(frozen=True)
class BankHeader:
    """One bank of a level in a store (see :mod:`napari_miner.core.banks`).

    Attributes
    ----------
    name : str
        ``"main"`` or ``"split{s}"``: the bank's arrays are ``levels/{j}/{name}/...``.
    grid : BlockGrid
        The bank's block grid.
    tile_blocks : tuple of int
        The level's tiles in the bank's blocks (finer banks have more blocks per tile).
    sizes : list of (int, int)
        ``(out, in)`` of the layers of its MLPs.
    """

    name: str
    grid: BlockGrid
    tile_blocks: tuple[int, ...]
    sizes: list[tuple[int, int]]

    @property
    def params_per_mlp(self) -> int:
        """Scalars of one MLP."""
        return params_per_mlp(self.sizes)

    @property
    def n_scales(self) -> int:
        """Scales of a quantised MLP: one for the weights and one for the biases of each layer."""
        return 2 * len(self.sizes)

    def specs(self, bits: int | None) -> dict[str, ArraySpec]:
        """The bank's arrays (``mask``, ``params`` and, quantised, ``scales``)."""
        grid, tiles, p = self.grid.grid_shape, self.tile_blocks, self.params_per_mlp
        compressor = default_compressor()
        if bits is None:
            return {
                "mask": ArraySpec(grid, tiles, "|u1", compressor),
                "params": ArraySpec((*grid, p), (*tiles, p), "<f4", compressor),
            }
        n = self.n_scales
        return {
            "mask": ArraySpec(grid, tiles, "|u1", compressor),
            "params": ArraySpec((*grid, p), (*tiles, p), "<u2", quantized_compressor()),
            "scales": ArraySpec((*grid, n), (*tiles, n), "<i2", compressor),
        }


@dataclass
class LevelHeader:
    """What the attributes say about one level (all of it checked)."""

    grid: BlockGrid
    tile_blocks: tuple[int, ...]
    banks: list[BankHeader]
    bits: int | None = None
    prune_threshold: float | None = None
    n_active: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def params_per_mlp(self) -> int:
        """Scalars of one MLP of the main bank."""
        return self.banks[0].params_per_mlp

    @property
    def tile_grid(self) -> tuple[int, ...]:
        """Tiles along each axis."""
        return tile_grid(self.grid, self.tile_blocks)

    @property
    def n_tiles(self) -> int:
        """Tiles of the level."""
        return math.prod(self.tile_grid)

    def specs(self) -> dict[str, ArraySpec]:
        """The arrays of the level, as the store must hold them: the records, then each bank's."""
        ones = (1,) * self.grid.ndim
        records = ArraySpec((*self.tile_grid, RECORD_BYTES), (*ones, RECORD_BYTES), "|u1")
        specs = {"records": records}
        for bank in self.banks:
            specs.update({f"{bank.name}/{k}": v for k, v in bank.specs(self.bits).items()})
        return specs


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
    layout: InputLayout,
    config: MinerConfig,
    tile_blocks: list[tuple[int, ...]],
    bits: list[int | None] | None = None,
) -> list[LevelHeader]:
    """The level headers of a store of ``layout`` and ``config`` (no threshold, no stats yet).

    ``bits`` gives each level's quantisation (``None``: float32 weights; default: all float32).
    """
    shapes = level_shapes(layout.spatial_shape, config.n_levels)
    ndim = len(layout.spatial_shape)
    bits = bits if bits is not None else [None] * config.n_levels
    headers = []
    for j, (shape, tiles, level_bits) in enumerate(zip(shapes, tile_blocks, bits, strict=True)):
        tiles = tuple(int(t) for t in tiles)
        banks = []
        for spec in level_banks(config, j):
            factor = config.block_size // spec.block_size
            grid = spec.grid(shape)
            scaled = tuple(min(t * factor, g) for t, g in zip(tiles, grid.grid_shape, strict=True))
            banks.append(
                BankHeader(spec.name, grid, scaled, spec.layer_sizes(ndim, layout.n_channels))
            )
        headers.append(LevelHeader(BlockGrid(shape, config.block_size), tiles, banks, level_bits))
    return headers


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
    ndim = len(layout.spatial_shape)
    tiles = [_tile_blocks(info, j, ndim, where) for j, info in enumerate(raw_levels)]
    bits = [_level_bits(info, j, where) for j, info in enumerate(raw_levels)]
    levels = level_headers(layout, config, tiles, bits)
    for j, (level, info) in enumerate(zip(levels, raw_levels, strict=True)):
        _check_level(level, info, j, where)
    return StoreHeader(root, status, config, layout, metadata, input_info, levels, fit, attributes)


def _tile_blocks(info: Any, j: int, ndim: int, where: str) -> tuple[int, ...]:
    if not isinstance(info, dict):
        raise ModelFormatError(f"{where}: level {j} is not a JSON object")
    tiles = info.get("tile_blocks")
    if not (
        isinstance(tiles, list)
        and len(tiles) == ndim
        and all(_is_count(t) and t >= 1 for t in tiles)
    ):
        raise ModelFormatError(
            f"{where}: level {j} tile_blocks {tiles!r} must be {ndim} positive integers"
        )
    return tuple(tiles)


def _level_bits(info: dict[str, Any], j: int, where: str) -> int | None:
    bits = info.get("bits")
    if bits is not None and not (_is_count(bits) and 4 <= bits <= 16):
        raise ModelFormatError(f"{where}: level {j} bits {bits!r} must be null or 4 to 16")
    return bits


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
    for bank in level.banks:
        blocks = math.prod(bank.tile_blocks)
        if blocks > MAX_TILE_BLOCKS or blocks * bank.params_per_mlp * 4 > MAX_CHUNK_BYTES:
            raise ModelFormatError(
                f"{where}: level {j} tiles of {list(level.tile_blocks)} are too big"
            )
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
