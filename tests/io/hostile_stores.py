"""Hostile model stores: many broken variants of small valid stores, for the loader's tests.

A model store is untrusted input. This module fits four small models once (:func:`build_bases`):

* ``model`` — a tiny in-memory fit saved with ``model.save`` (format 3, one tile per level, weights
  quantised to 7 bits; level 0 has MLPs in its ``main``, ``lite`` and ``split1`` banks);
* ``float`` — the same input fitted with float32 weights (``weight_bits=None``; every bank has MLPs);
* ``complete`` — an out-of-core fit into a store (several tiles per level, status "complete");
* ``fitting`` — an out-of-core fit interrupted after a few tiles of level 0 (status "fitting"),

and :data:`CASES` lists named edits of them (:func:`materialize` applies one to a copy). Each case
says what it does and what loading it must give:

* ``"error"`` — :class:`napari_miner.ModelFormatError` (on loading, or at the latest when the damaged
  part is read), naming the store;
* ``"same"`` — a benign edit: the store decodes exactly as the original;
* ``"same_values"`` — the edited layout asks for another dtype: the same values in that dtype;
* ``"unfinished"`` — a store being fitted whose one edited tile counts as not yet trained: it decodes
  exactly like the original with that tile's record removed (a legitimately unfinished tile).

Cases marked ``absurd`` claim huge sizes; they are run in a subprocess whose address space is limited
(see ``test_hostile_stores.py``), so that any allocation in proportion to the claim fails.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import napari_miner as nm
from napari_miner.core.config import MinerConfig
from napari_miner.core.events import TileFinished
from napari_miner.core.layout import InputLayout
from napari_miner.core.quantize import code_limits
from napari_miner.io.chunks import ArraySpec, read_chunk, write_chunk
from napari_miner.io.schema import (
    DIGEST_BYTES,
    RECORD_BYTES,
    RECORD_BYTES_V2,
    RECORD_FIELDS,
    LevelHeader,
    level_headers,
    parse_attributes,
)
from napari_miner.io.store import tile_digest

__all__ = ["CASES", "BASES", "Case", "build_bases", "fitting_data", "materialize", "TINY"]

TINY = MinerConfig(n_levels=2, block_size=8, hidden_width=8, max_steps=10, target_psnr=45.0)
"""Small MLPs and a target that level 1 cannot reach alone: level 0 gets MLPs in every bank."""
BASES = ("model", "float", "complete", "fitting")
NEAR = (0, 0)
"""A tile of level 0 of the out-of-core stores under the 8x8 region that the tests decode."""
FAR = (5, 4)
"""A tile of level 0 of the out-of-core stores far from that region."""
FITTING_DONE = (0, 0)
"""A finished level-0 tile of the ``fitting`` store; (5, 4) there is unfinished."""
FIT_KWARGS = dict(device="cpu", memory_budget="64MB", tile_blocks=2)
TWO_MILLION = 2_000_000
Edit = Callable[[Path, Path], None]
"""An edit of a store: ``edit(path, outside)`` (``outside``: a directory outside the store)."""
BANKS0 = ("main", "lite", "split1")
"""The banks of level 0 under :data:`TINY` (level 1 has ``main`` and ``lite``)."""


def _image(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    signal = sum(np.sin(5 * g + p) for g, p in zip(grids, rng.random(len(shape)) * 6, strict=True))
    # noise strongest in two corners: level 0 needs main, lite and split MLPs
    u, v = grids[0], grids[-1]
    noise = 0.25 * rng.random(shape) * (0.3 + u * v + (1 - u) * (1 - v))
    return (signal + noise).astype(np.float32)


def fitting_data() -> np.ndarray:
    """The input of the ``complete`` and ``fitting`` stores (96 x 80: 12 x 10 blocks of 8)."""
    return _image((96, 80), seed=1)


def build_bases(directory: Path) -> dict[str, Path]:
    """Fit the four small valid stores into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.miner.zarr" for name in BASES}
    nm.fit(_image((40, 48), seed=0), TINY, device="cpu").save(paths["model"])
    float_config = dataclasses.replace(TINY, weight_bits=None, lite_energy=20.0)  # lite MLPs too
    nm.fit(_image((40, 48), seed=0), float_config, device="cpu").save(paths["float"])
    nm.fit(fitting_data(), TINY, store=paths["complete"], **FIT_KWARGS)
    run = nm.fit_iter(fitting_data(), TINY, store=paths["fitting"], **FIT_KWARGS)
    finished = 0
    for event in run:
        if isinstance(event, TileFinished) and event.level == 0:
            finished += 1
            if finished == 3:
                break
    run.close()
    records = paths["fitting"] / "levels" / "0" / "records"
    assert (records / "0.0.0").is_file() and not (records / "5.4.0").exists()
    return paths


# ---------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """A named edit of a base store and what loading the result must give."""

    name: str
    what: str
    edit: Edit
    base: str = "model"
    expect: str = "error"
    absurd: bool = False


CASES: list[Case] = []


def _add(name: str, what: str, edit: Edit, **options: Any) -> None:
    assert name not in {c.name for c in CASES}, name
    CASES.append(Case(name, what, edit, **options))


def materialize(case: Case, bases: dict[str, Path], directory: Path) -> Path:
    """Copy the case's base store into ``directory`` and apply the edit; returns the store path.

    ``directory / "outside"`` is a directory outside the store that links may point into.
    """
    path = directory / f"{case.name}.miner.zarr"
    shutil.copytree(bases[case.base], path, symlinks=True)
    outside = directory / "outside"
    outside.mkdir(exist_ok=True)
    case.edit(path, outside)
    return path


# ------------------------------------------------------------------------------- edit tools
TileArrays = dict[str, dict[str, np.ndarray]]
"""A tile's decoded chunks as stored: bank name -> {"mask", "params"[, "scales"]} -> array."""
_DELETE = object()


def _curried(function: Callable[..., Any]) -> Callable[..., Callable[..., Any]]:
    """Write a helper with its subject first, call it with the rest: ``remove("a")(path, outside)``.

    The subject of an edit is ``(path, outside)``, of a change of a file ``(raw bytes)``, of a change
    of a tile ``(arrays, level header)``.
    """

    @functools.wraps(function)
    def factory(*args: Any, **kwargs: Any) -> Callable[..., Any]:
        return lambda *subject: function(*subject, *args, **kwargs)

    return factory


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, allow_nan=True))


def attrs(path: Path) -> dict[str, Any]:
    """The root attributes of a store."""
    return _read_json(path / ".zattrs")


def _set_nested(document: Any, keys: tuple, value: Any) -> None:
    for key in keys[:-1]:
        document = document[key]
    if value is _DELETE:
        del document[keys[-1]]
    else:
        document[keys[-1]] = value


@_curried
def set_attr(path: Path, outside: Path, *keys: Any, value: Any, consistent: bool = False) -> None:
    """Edit: set (or with ``value=_DELETE`` remove) one nested root attribute."""
    document = attrs(path)
    _set_nested(document, keys, value)
    _write_json(path / ".zattrs", document)
    if consistent:
        make_arrays_consistent(path)


@_curried
def set_zarray(path: Path, outside: Path, array: str, key: str, value: Any) -> None:
    """Edit: set (or remove) one key of the ``.zarray`` of ``array`` (``levels/0/main/params``)."""
    meta = _read_json(path / array / ".zarray")
    _set_nested(meta, (key,), value)
    _write_json(path / array / ".zarray", meta)


@_curried
def write_file(path: Path, outside: Path, relative: str, data: bytes) -> None:
    """Edit: replace (or create) a file of the store."""
    (path / relative).write_bytes(data)


@_curried
def sparse_file(path: Path, outside: Path, relative: str, size: int, prefix: bytes = b"") -> None:
    """Edit: replace a file by a (sparse) one of ``size`` bytes starting with ``prefix``."""
    with open(path / relative, "wb") as handle:
        handle.write(prefix)
        handle.truncate(size)


@_curried
def change_file(path: Path, outside: Path, relative: str, change: Callable[[bytes], bytes]) -> None:
    """Edit: rewrite a file's bytes."""
    (path / relative).write_bytes(change((path / relative).read_bytes()))


@_curried
def remove(path: Path, outside: Path, relative: str) -> None:
    """Edit: delete a file or directory of the store."""
    target = path / relative
    shutil.rmtree(target) if target.is_dir() else target.unlink()


@_curried
def swap(path: Path, outside: Path, one: str, other: str) -> None:
    """Edit: exchange two files of the store."""
    os.replace(path / one, outside / "swap")
    os.replace(path / other, path / one)
    os.replace(outside / "swap", path / other)


@_curried
def copy(path: Path, outside: Path, relative: str, to: str) -> None:
    """Edit: copy a file or directory of the store to another place in it."""
    source, target = path / relative, path / to
    shutil.copytree(source, target) if source.is_dir() else shutil.copyfile(source, target)


@_curried
def reencode(path: Path, outside: Path, relative: str, cname: str) -> None:
    """Edit: decode a Blosc chunk and compress it again with another inner codec."""
    from numcodecs import Blosc

    data = Blosc().decode((path / relative).read_bytes())
    (path / relative).write_bytes(bytes(Blosc(cname=cname, clevel=1).encode(data)))


@_curried
def flip(raw: bytes, offset: int) -> bytes:
    """Change: invert the bits of the byte at ``offset`` (negative: from the end)."""
    data = bytearray(raw)
    data[offset] ^= 0xFF
    return bytes(data)


@_curried
def blosc_header(
    raw: bytes, nbytes: int | None = None, blocksize: int | None = None, cbytes: int | None = None
) -> bytes:
    """Change: overwrite fields of a chunk's Blosc header (decoded size, block size, stored size)."""
    data = bytearray(raw)
    for offset, value in ((4, nbytes), (8, blocksize), (12, cbytes)):
        if value is not None:
            data[offset : offset + 4] = struct.pack("<I", value)
    return bytes(data)


@_curried
def record_field(raw: bytes, field: str | int, value: float) -> bytes:
    """Change: set one float64 field of a tile record (an integer: that bank's MLP count)."""
    position = len(RECORD_FIELDS) + field if isinstance(field, int) else RECORD_FIELDS.index(field)
    offset = DIGEST_BYTES + 8 * position
    return raw[:offset] + struct.pack("<d", value) + raw[offset + 8 :]


@_curried
def move_count(raw: bytes, source: int | None, target: int) -> bytes:
    """Change: move one of a record's MLPs from bank ``source`` to bank ``target``.

    ``source=None`` adds one to ``target`` and to ``n_mlps`` (the counts still add up).
    """
    start = DIGEST_BYTES + 8 * len(RECORD_FIELDS)
    counts = list(struct.unpack_from("<6d", raw, start))
    counts[target] += 1
    if source is not None:
        counts[source] -= 1
    else:
        raw = record_field("n_mlps", sum(counts))(raw)
    return raw[:start] + struct.pack("<6d", *counts)


def tile_files(level: int, index: tuple[int, ...], bank: str = "main") -> dict[str, str]:
    """The chunk files of a tile (relative paths of a bank's mask, params, scales; its record)."""
    key, base = ".".join(map(str, index)), f"levels/{level}"
    files = {name: f"{base}/{bank}/{name}/{key}.0" for name in ("params", "scales")}
    return {"mask": f"{base}/{bank}/mask/{key}", **files, "records": f"{base}/records/{key}.0"}


@_curried
def change_tile(path: Path, outside: Path, level: int, index: tuple[int, ...],
                change: Callable[[TileArrays, LevelHeader], None]) -> None:  # fmt: skip
    """Edit: change a tile's stored arrays in place, re-encode them and re-hash its record.

    ``change`` gets every bank's arrays (codes and scale codes where the level is quantised) and
    the level's header. The record's checksum and MLP counts (each bank's mask sum) are recomputed:
    the result is a consistent store that holds the changed data.
    """
    info = parse_attributes(path, attrs(path)).levels[level]
    chunks = [
        (bank.name, name, spec, path / f"levels/{level}/{bank.name}/{name}",
         index if name == "mask" else (*index, 0))
        for bank in info.banks
        for name, spec in bank.specs(info.bits).items()
    ]  # fmt: skip
    arrays: TileArrays = {bank.name: {} for bank in info.banks}
    for bank, name, spec, directory, key in chunks:
        arrays[bank][name] = read_chunk(directory, spec, key, name).copy()
    change(arrays, info)
    for bank, name, spec, directory, key in chunks:
        write_chunk(directory, spec, key, arrays[bank][name])
    counts = [float(arrays[bank.name]["mask"].sum()) for bank in info.banks]
    counts += [0.0] * (6 - len(counts))
    record_file = path / tile_files(level, index)["records"]
    record = bytearray(record_file.read_bytes())
    record[:DIGEST_BYTES] = tile_digest([arrays[bank][name] for bank, name, *_ in chunks])
    record[DIGEST_BYTES + 8 : DIGEST_BYTES + 16] = struct.pack("<d", sum(counts))
    record[DIGEST_BYTES + 8 * len(RECORD_FIELDS) :] = struct.pack("<6d", *counts)
    record_file.write_bytes(bytes(record))


def first_active(arrays: TileArrays, bank: str) -> tuple[int, ...]:
    """Position in the tile of the first block of ``bank`` that has an MLP."""
    active = np.argwhere(arrays[bank]["mask"])
    assert len(active), f"the tile has no MLP in its {bank} bank"
    return tuple(int(i) for i in active[0])


@_curried
def set_value(arrays: TileArrays, level: LevelHeader, bank: str, array: str, column: int,
              value: float | Callable[[LevelHeader, str], float]) -> None:  # fmt: skip
    """Change: set one value of the first MLP of ``bank`` (``value(level, bank)`` if callable)."""
    at = (*first_active(arrays, bank), column)
    arrays[bank][array][at] = value(level, bank) if callable(value) else value


@_curried
def keep_one(arrays: TileArrays, level: LevelHeader, bank: str) -> None:
    """Change: remove every MLP of ``bank`` but the first from the tile."""
    first = first_active(arrays, bank)
    arrays[bank]["mask"][...] = 0
    arrays[bank]["mask"][first] = 1


def above_grid(level: LevelHeader, bank: str) -> int:
    """The smallest integer code above the grid of the first value of a packed MLP of ``bank``."""
    (sizes,) = [b.sizes for b in level.banks if b.name == bank]
    assert level.bits is not None
    return int(code_limits(sizes, level.bits)[0]) + 1


def make_arrays_consistent(path: Path) -> None:
    """Rewrite every ``.zarray`` to what the (edited) attributes imply, as a careful forger would."""
    document = attrs(path)
    config = MinerConfig.from_dict(document["config"])
    layout = InputLayout.from_dict(document["layout"])
    tiles = [tuple(level["tile_blocks"]) for level in document["levels"]]
    bits = [level.get("bits") for level in document["levels"]]
    for j, header in enumerate(level_headers(layout, config, tiles, bits)):
        for name, spec in header.specs().items():
            directory = path / "levels" / str(j) / name
            directory.mkdir(parents=True, exist_ok=True)
            _write_json(directory / ".zarray", spec.to_zarray())


@_curried
def both(path: Path, outside: Path, *edits: Edit) -> None:
    """Edit: apply several edits in order."""
    for one in edits:
        one(path, outside)


@_curried
def relink(path: Path, outside: Path, relative: str, target: str | None = None) -> None:
    """Edit: move a file or directory of the store outside it and put a symbolic link in its place.

    ``target`` links to another name outside instead (a dangling link if it does not exist).
    """
    source = path / relative
    moved = outside / (relative.replace("/", "_") + "-" + path.name)
    if target is None:
        shutil.move(source, moved)
    else:
        shutil.rmtree(source) if source.is_dir() else source.unlink()
        moved = outside / target
    os.symlink(moved, source)


@_curried
def fifo(path: Path, outside: Path, relative: str) -> None:
    """Edit: replace a file by a named pipe (a reader that opened it would block forever)."""
    (path / relative).unlink()
    os.mkfifo(path / relative)


@_curried
def hardlink(path: Path, outside: Path, relative: str) -> None:
    """Edit: make a file a hard link shared with a copy outside the store (same content)."""
    copy = outside / f"hardlink-{path.name}"
    shutil.copyfile(path / relative, copy)
    (path / relative).unlink()
    os.link(copy, path / relative)


@_curried
def all_records(path: Path, outside: Path, level: int,
                change: Callable[[bytes], bytes] | None) -> None:  # fmt: skip
    """Edit: change (or with ``None`` delete) every record of a level."""
    for record in (path / f"levels/{level}/records").glob("*.0"):
        record.unlink() if change is None else record.write_bytes(change(record.read_bytes()))


# fmt: off
# ---------------------------------------------------------------------------- the corpus
P0 = "levels/0/main/params"
M0 = "levels/0/main/mask"
S0 = "levels/0/main/scales"
NEAR_FILES = tile_files(0, NEAR)
FAR_FILES = tile_files(0, FAR)
MODEL_FILES = tile_files(0, (0, 0))


def _zarray_cases() -> None:
    filters = {"pickle": [{"id": "pickle", "protocol": 5}], "vlen-utf8": [{"id": "vlen-utf8"}],
               "json2": [{"id": "json2", "encoding": "utf-8"}],
               "fixedscaleoffset": [{"id": "fixedscaleoffset", "offset": 0, "scale": 1,
                                     "dtype": "<f4"}]}
    for name, value in filters.items():
        _add(f"zarray-filter-{name}", f"params .zarray lists a {name} filter",
             set_zarray(P0, "filters", value))
    _add("zarray-object-dtype-json2", "params are an object array with a json2 filter",
         both(set_zarray(P0, "dtype", "|O"), set_zarray(P0, "filters", filters["json2"])))
    for codec in ("pickle", "zlib", "gzip", "lzma", "zstd", "bz2", "lz4"):
        _add(f"zarray-compressor-{codec}", f"params .zarray compressor is {codec}",
             set_zarray(P0, "compressor", {"id": codec}))
    _add("zarray-compressor-string", "compressor is a string, not an object",
         set_zarray(P0, "compressor", "blosc"))
    _add("zarray-compressor-null", "params claim to be stored uncompressed",
         set_zarray(P0, "compressor", None))
    _add("zarray-records-compressed", "the records claim a Blosc compressor",
         set_zarray("levels/0/records", "compressor",
                    {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1}))
    blosc = {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1, "blocksize": 0}
    _add("zarray-blosc-unknown-cname", "Blosc with an unknown inner codec",
         set_zarray(P0, "compressor", {**blosc, "cname": "evil"}))
    _add("zarray-blosc-clevel-string", "Blosc clevel is a string",
         set_zarray(P0, "compressor", {**blosc, "clevel": "max"}))
    _add("zarray-blosc-shuffle-list", "Blosc shuffle is a list",
         set_zarray(P0, "compressor", {**blosc, "shuffle": [1]}))
    _add("zarray-blosc-extra-key", "Blosc configuration with an unknown key",
         set_zarray(P0, "compressor", {**blosc, "exec": "import os"}))
    _add("zarray-blosc-lz4", "Blosc with another inner codec (the chunks say what they are)",
         set_zarray(P0, "compressor", {**blosc, "cname": "lz4", "clevel": 9}), expect="same")
    _add("zarray-blosc-minimal", "Blosc configuration with only its id",
         set_zarray(P0, "compressor", {"id": "blosc"}), expect="same")
    _add("zarray-order-F", "Fortran order", set_zarray(P0, "order", "F"))
    _add("zarray-separator-slash", "nested chunk keys", set_zarray(P0, "dimension_separator", "/"))
    _add("zarray-format-3", "zarr_format 3", set_zarray(P0, "zarr_format", 3))
    _add("zarray-format-missing", "no zarr_format", set_zarray(P0, "zarr_format", _DELETE))
    _add("zarray-filters-empty", "an empty filter list", set_zarray(P0, "filters", []),
         expect="same")
    _add("zarray-fill-nan", "fill_value NaN", set_zarray(P0, "fill_value", "NaN"), expect="same")
    _add("zarray-extra-key", "an unknown .zarray key", set_zarray(P0, "note", {"a": 1}),
         expect="same")

    def shape(value: Callable[[list], Any], array: str = P0, key: str = "shape"):
        def edit(path: Path, outside: Path) -> None:
            meta = _read_json(path / array / ".zarray")
            meta[key] = value(meta[key])
            _write_json(path / array / ".zarray", meta)

        return edit

    _add("zarray-shape-negative", "a negative array side", shape(lambda s: [-s[0], *s[1:]]))
    _add("zarray-shape-zero", "an empty array", shape(lambda s: [0, *s[1:]]))
    _add("zarray-shape-4d", "a 4-D mask", shape(lambda s: [*s, 1, 1], M0))
    _add("zarray-shape-float", "a non-integer side", shape(lambda s: [s[0] + 0.5, *s[1:]]))
    _add("zarray-shape-integral-float", "a float side", shape(lambda s: [float(s[0]), *s[1:]]))
    _add("zarray-shape-bool", "a boolean side", shape(lambda s: [True, *s[1:]]))
    _add("zarray-shape-string", "shape is a string", shape(lambda s: "5,6"))
    _add("zarray-shape-huge", "a 2**62 x 2**62 array", shape(lambda s: [2**62, 2**62, *s[2:]]),
         absurd=True)
    _add("zarray-chunks-zero", "empty chunks", shape(lambda c: [0, *c[1:]], key="chunks"))
    _add("zarray-chunks-huge", "2**40-block chunks",
         shape(lambda c: [2**40, 2**40, *c[2:]], key="chunks"), absurd=True)
    _add("zarray-chunks-short", "chunks of the wrong rank", shape(lambda c: c[:1], key="chunks"))
    _add("zarray-records-huge", "records claim a 2**31 x 2**31 tile grid",
         shape(lambda s: [2**31, 2**31, s[2]], "levels/0/records"), absurd=True)
    for dtype in ("|O", "<U4", "<c8", ">f8", ">f4", "<f8", "|V8", "M8[ns]", "float128x", "<f4",
                  ">u2", "<i2", "<u4", "|u1"):
        _add(f"zarray-dtype-{dtype}", f"quantised params dtype {dtype}, not <u2",
             set_zarray(P0, "dtype", dtype))
    for dtype in ("<u2", ">f4", "<f8", "<f2"):
        _add(f"zarray-float-dtype-{dtype}", f"float32 params dtype {dtype}",
             set_zarray(P0, "dtype", dtype), base="float")
    for dtype in ("<f4", "<u2", ">i2", "<i4", "|i1"):
        _add(f"zarray-scales-dtype-{dtype}", f"scales dtype {dtype}, not <i2",
             set_zarray(S0, "dtype", dtype))
    _add("zarray-scales-shape", "scales of one layer too many",
         shape(lambda s: [*s[:-1], s[-1] + 2], S0))
    _add("zarray-scales-uncompressed", "scales claim to be stored uncompressed",
         set_zarray(S0, "compressor", None))
    _add("zarray-lite-params-dtype-<f4", "the lite bank's params as float32",
         set_zarray("levels/0/lite/params", "dtype", "<f4"))
    _add("zarray-split1-shape", "the split bank's grid of main's blocks",
         shape(lambda s: [5, 6, *s[2:]], "levels/0/split1/params"))
    _add("zarray-dtype-structured", "a structured dtype",
         set_zarray(P0, "dtype", [["a", "<f4"], ["b", "|O"]]))
    _add("zarray-dtype-number", "dtype is a number", set_zarray(P0, "dtype", 5))
    _add("zarray-mask-dtype-f4", "the mask holds floats", set_zarray(M0, "dtype", "<f4"))
    _add("zarray-not-json", "params .zarray is not JSON", write_file(f"{P0}/.zarray", b"{'a': 1"))
    _add("zarray-json-list", "params .zarray is a JSON list", write_file(f"{P0}/.zarray", b"[2]"))
    _add("zarray-missing", "params .zarray deleted", remove(f"{P0}/.zarray"))
    _add("zarray-100MB", "a 100 MB params .zarray",
         sparse_file(f"{P0}/.zarray", 100 << 20, b'{"zarr_format": 2, "x": "'), absurd=True)
    _add("array-missing", "the level-1 mask array is gone", remove("levels/1/main/mask"))
    _add("level-missing", "the level-1 group is gone", remove("levels/1"))
    for array in ("levels/0/main/scales", "levels/0/split1/scales", "levels/1/lite/scales"):
        _add(f"array-missing-{array[9:].replace('/', '-')}", f"{array} of a quantised level is gone",
             remove(array))
    for bank in ("levels/0/main", "levels/0/lite", "levels/0/split1", "levels/1/lite"):
        _add(f"bank-missing-{bank[7:].replace('/', '-')}", f"the bank directory {bank} is gone",
             remove(bank))
    _add("bank-missing-complete", "a bank directory of an out-of-core store is gone",
         remove("levels/0/split1"), base="complete")
    _add("bank-unknown-split2", "a bank that the config does not have (ignored)",
         copy("levels/0/split1", "levels/0/split2"), expect="same")
    _add("bank-unknown-name", "an unknown directory beside the banks (ignored)",
         copy("levels/0/lite", "levels/0/extra"), expect="same")
    _add("bank-unknown-array", "an unknown array in a bank (ignored)",
         copy(S0, "levels/0/main/biases"), expect="same")


def _attribute_cases() -> None:
    _add("zattrs-missing", ".zattrs deleted", remove(".zattrs"))
    _add("zattrs-not-json", ".zattrs is not JSON", write_file(".zattrs", b"{format: 3"))
    _add("zattrs-json-list", ".zattrs is a JSON list", write_file(".zattrs", b'["format"]'))
    _add("zattrs-json-string", ".zattrs is a JSON string", write_file(".zattrs", b'"x"'))
    _add("zattrs-json-null", ".zattrs is null", write_file(".zattrs", b"null"))
    _add("zattrs-empty", ".zattrs is empty", write_file(".zattrs", b""))
    _add("zattrs-invalid-utf8", ".zattrs is not UTF-8", write_file(".zattrs", b'{"\xff": 1}'))
    _add("zattrs-deep-nesting", ".zattrs nests 100000 lists",
         write_file(".zattrs", b"[" * 100_000 + b"]" * 100_000))
    _add("zattrs-huge-integer", "format_version has 5000 digits",
         write_file(".zattrs", b'{"format": "napari-miner.model", "format_version": 1'
                    + b"0" * 5000 + b"}"))
    _add("zattrs-100MB", "a 100 MB .zattrs",
         sparse_file(".zattrs", 100 << 20, b'{"format": "napari-miner.model", "pad": "'),
         absurd=True)
    _add("zattrs-directory", ".zattrs is a directory",
         both(remove(".zattrs"), lambda path, outside: (path / ".zattrs").mkdir()))
    _add("zgroup-missing", "the root .zgroup is gone (not needed to read the model)",
         remove(".zgroup"), expect="same")
    _add("extra-file", "an unknown file in the store", write_file("README.txt", b"hello"),
         expect="same")
    _add("unknown-attribute", "an unknown root attribute", set_attr("comment", value="x"),
         expect="same")
    for name, value in (("wrong", "something-else"), ("missing", _DELETE), ("number", 3)):
        _add(f"format-{name}", f"format attribute: {value!r}", set_attr("format", value=value))
    versions = {"newer": 4, "string": "3", "bool": True, "float": 3.0, "zero": 0, "negative": -1,
                "legacy-1": 1, "legacy-2": 2, "null": None}
    for name, value in versions.items():
        _add(f"format-version-{name}", f"format_version {value!r}",
             set_attr("format_version", value=value))
    _add("status-unknown", "status 'done'", set_attr("status", value="done"))
    _add("status-missing", "no status", set_attr("status", value=_DELETE))
    # config
    _add("config-list", "config is a list", set_attr("config", value=[1, 2]))
    _add("config-missing", "no config", set_attr("config", value=_DELETE))
    _add("config-unknown-key", "config has an unknown key", set_attr("config", "x", value=1))
    _add("config-n_levels-20", "n_levels 20", set_attr("config", "n_levels", value=20),
         absurd=True)
    _add("config-n_levels-3", "n_levels 3 with 2 stored levels",
         set_attr("config", "n_levels", value=3))
    _add("config-block_size-2**31", "block_size 2**31",
         set_attr("config", "block_size", value=2**31), absurd=True)
    _add("config-block_size-16", "block_size 16: arrays do not fit",
         set_attr("config", "block_size", value=16))
    _add("config-block_size-string", "block_size '8'", set_attr("config", "block_size", value="8"))
    _add("config-block_size-float", "block_size 8.0", set_attr("config", "block_size", value=8.0))
    _add("config-hidden_width-4096", "huge MLPs (arrays made to fit)",
         both(set_attr("config", "hidden_width", value=4096),
              set_attr("config", "coarsest_width_factor", value=64, consistent=True)),
         absurd=True)
    _add("config-hidden_width-9", "hidden_width 9: arrays do not fit",
         set_attr("config", "hidden_width", value=9))
    _add("config-max_steps-negative", "max_steps -1", set_attr("config", "max_steps", value=-1))
    _add("config-omega-NaN", "omega_0 NaN", set_attr("config", "omega_0", value=math.nan))
    _add("config-omega-huge", "omega_0 1e300 (folded into the stored weights: no effect)",
         set_attr("config", "omega_0", value=1e300), expect="same")
    # the banks (their arrays and the records' counts must match what the config implies)
    for key, value, name in (("max_splits", 2, 2), ("max_splits", 5, 5), ("max_splits", -1, -1),
                             ("lite_width", None, "null"), ("lite_width", 16, 16),
                             ("lite_width", 0, 0), ("split_width", 16, 16),
                             ("split_width", "8", "string"), ("weight_bits", 3, 3),
                             ("weight_bits", 4, "4-below-target"), ("weight_bits", "7", "string"),
                             ("lite_energy", math.nan, "NaN")):
        _add(f"config-{key}-{name}", f"config {key} {value!r}",
             set_attr("config", key, value=value))
    _add("config-max_splits-0", "no split bank in the config, its arrays and MLPs still there",
         set_attr("config", "max_splits", value=0))
    _add("config-max_splits-0-one-split", "no split bank in the config, one split MLP left: "
         "no more MLPs than the other banks have blocks",
         both(change_tile(0, (0, 0), keep_one("split1")), set_attr("config", "max_splits", value=0)))
    for value in (None, 8, 16):  # quantisation is the levels' attribute, not the config's
        _add(f"config-weight_bits-{value or 'null'}", f"config weight_bits {value!r} (levels say 7)",
             set_attr("config", "weight_bits", value=value), expect="same")
    # layout
    _add("layout-list", "layout is a list", set_attr("layout", value=[40, 48]))
    _add("layout-missing", "no layout", set_attr("layout", value=_DELETE))
    _add("layout-key-missing", "layout without value_max",
         set_attr("layout", "value_max", value=_DELETE))
    shapes = {"negative": [-40, 48], "zero": [0, 48], "4d": [2, 3, 40, 48], "1d": [40],
              "float": [40.5, 48], "bool": [True, 48], "string": "40x48", "tiny": [4, 4]}
    for name, value in shapes.items():
        _add(f"layout-shape-{name}", f"layout shape {value!r}",
             set_attr("layout", "shape", value=value))
    for dtype in ("|O", "<U4", "<c8", "float128x", "|V4", 5):
        _add(f"layout-dtype-{dtype}", f"layout dtype {dtype!r}",
             set_attr("layout", "dtype", value=dtype))
    _add("layout-dtype->f8", "layout dtype >f8: decodes in that dtype",
         set_attr("layout", "dtype", value=">f8"), expect="same_values")
    values = {"min-NaN-string": ("value_min", "NaN"), "min-NaN": ("value_min", math.nan),
              "max-Infinity-string": ("value_max", "Infinity"), "max-inf": ("value_max", math.inf),
              "min-string": ("value_min", "0"), "min-above-max": ("value_min", 10.0),
              "max-null": ("value_max", None), "min-bool": ("value_min", False)}
    for name, (key, value) in values.items():
        _add(f"layout-value-{name}", f"layout {key} {value!r}",
             set_attr("layout", key, value=value))
    _add("layout-value-range-overflow", "value range wider than float64",
         both(set_attr("layout", "value_min", value=-1.7e308),
              set_attr("layout", "value_max", value=1.7e308)))
    axes = {"5": 5, "-1": -1, "string": "0", "float": 1.0, "0-of-2d": 0}
    for name, value in axes.items():
        _add(f"layout-channel_axis-{name}", f"channel_axis {value!r}",
             set_attr("layout", "channel_axis", value=value))
    _add("layout-rgb-without-channels", "rgb true without a channel axis",
         set_attr("layout", "rgb", value=True))
    _add("layout-rgb-string", "rgb 'yes'", set_attr("layout", "rgb", value="yes"))
    _add("layout-5000-channels", "5000 channels",
         both(set_attr("layout", "shape", value=[40, 48, 5000]),
              set_attr("layout", "channel_axis", value=2)))
    # other attributes
    for key in ("metadata", "input", "fit"):
        for name, value in (("list", [1]), ("string", "x"), ("number", 5)):
            _add(f"{key}-{name}", f"{key} is {value!r}", set_attr(key, value=value))
    _add("metadata-null", "metadata null", set_attr("metadata", value=None))
    _add("metadata-non-finite", "metadata with non-finite numbers",
         set_attr("metadata", "loss", value=["NaN", "Infinity", math.nan]), expect="same")
    _add("input-null", "no input description", set_attr("input", value=None), expect="same")
    # levels
    _add("levels-dict", "levels is an object", set_attr("levels", value={"0": {}}))
    _add("levels-too-few", "one level listed", set_attr("levels", value=[{"tile_blocks": [5, 6]}]))
    _add("levels-entry-null", "a level is null", set_attr("levels", 1, value=None))
    _add("levels-entry-list", "a level is a list", set_attr("levels", 1, value=[3, 3]))
    tiles = {"huge": [2**40, 2**40], "zero": [0, 6], "negative": [-5, 6], "float": [5.0, 6],
             "string": ["5", 6], "bool": [True, 6], "short": [5], "empty": [], "null": None,
             "missing": _DELETE}
    for name, value in tiles.items():
        _add(f"tile_blocks-{name}", f"level 0 tile_blocks {value!r}",
             set_attr("levels", 0, "tile_blocks", value=value),
             absurd=name == "huge")
    _add("tile_blocks-long", "level 0 tile_blocks [5, 6, 1] in a 2-D store",
         set_attr("levels", 0, "tile_blocks", value=[5, 6, 1]))
    _add("tile_blocks-1-consistent", "1-block tiles, arrays made to fit (records do not)",
         set_attr("levels", 0, "tile_blocks", value=[1, 1], consistent=True))
    for name, value in (("negative", -1), ("huge", 10**12), ("string", "3"), ("float", 3.5)):
        _add(f"n_active-{name}", f"n_active {value!r}",
             set_attr("levels", 0, "n_active", value=value))
    _add("n_active-null", "n_active null", set_attr("levels", 0, "n_active", value=None),
         expect="same")
    for name, value, expect in (("NaN", "NaN", "error"), ("NaN-literal", math.nan, "error"),
                                ("string", "abc", "error"), ("-Infinity", "-Infinity", "same"),
                                ("list", [1], "error")):
        _add(f"prune_threshold-{name}", f"prune_threshold {value!r}",
             set_attr("levels", 0, "prune_threshold", value=value), expect=expect)
    _add("stats-list", "level stats is a list", set_attr("levels", 0, "stats", value=[1]))
    _add("stats-edited", "level stats changed", set_attr("levels", 0, "stats", "psnr", value=99.0),
         expect="same")
    _add("stats-empty", "level stats empty (summed from the records)",
         set_attr("levels", 0, "stats", value={}), expect="same")
    # quantisation
    bits = {"0": 0, "3": 3, "17": 17, "negative": -7, "string": "8", "bool": True, "float": 7.5,
            "NaN": "NaN", "list": [7]}
    for name, value in bits.items():
        _add(f"bits-{name}", f"level 0 bits {value!r}", set_attr("levels", 0, "bits", value=value))
    _add("bits-null", "level 0 bits null (float32), its arrays quantised",
         set_attr("levels", 0, "bits", value=None))
    _add("bits-missing", "level 1 without bits (float32), its arrays quantised",
         set_attr("levels", 1, "bits", value=_DELETE))
    _add("bits-null-consistent", "bits null with float32 .zarray, the chunks quantised",
         set_attr("levels", 0, "bits", value=None, consistent=True))
    _add("bits-4", "level 0 bits 4: its codes lie outside that grid",
         set_attr("levels", 0, "bits", value=4))
    _add("bits-8", "level 0 bits 8: a finer grid holds the same codes (decoding is the same)",
         set_attr("levels", 0, "bits", value=8), expect="same")
    _add("bits-8-complete", "bits 8 in an out-of-core store",
         set_attr("levels", 0, "bits", value=8), base="complete", expect="same")
    _add("bits-7-float", "bits 7 on a level of float32 weights",
         set_attr("levels", 0, "bits", value=7), base="float")
    _add("bits-7-float-consistent", "bits 7, quantised .zarray, float32 chunks",
         set_attr("levels", 0, "bits", value=7, consistent=True), base="float")
    _add("bits-missing-float", "no bits attribute on float32 levels (null is the default)",
         set_attr("levels", 0, "bits", value=_DELETE), base="float", expect="same")


def _absurd_size_cases() -> None:
    big = [TWO_MILLION, TWO_MILLION]
    for base in ("model", "fitting"):
        _add(f"layout-2e6-{base}", "layout claims 2e6 x 2e6 pixels, arrays made to fit",
             set_attr("layout", "shape", value=big, consistent=True), base=base, absurd=True)
    _add("layout-2e6-tiles-256-fitting", "2e6 x 2e6 pixels in 256 x 256-block tiles",
         both(set_attr("levels", 0, "tile_blocks", value=[256, 256]),
              set_attr("levels", 1, "tile_blocks", value=[256, 256]),
              set_attr("layout", "shape", value=big, consistent=True)),
         base="fitting", absurd=True)
    _add("layout-62500^2-blocks-fitting", "a 62500 x 62500 block grid with 32-pixel blocks, "
         "the existing tiles' files still matching (a few finished tiles)",
         both(set_attr("config", "block_size", value=32),
              set_attr("layout", "shape", value=big, consistent=True)),
         base="fitting", absurd=True)
    _add("layout-16-levels-fitting", "16 levels over 2e6 x 2e6 pixels",
         both(set_attr("config", "n_levels", value=16),
              set_attr("levels", value=[{"tile_blocks": [2, 2], "bits": 7, "stats": {}}] * 16),
              set_attr("layout", "shape", value=big, consistent=True)),
         base="fitting", absurd=True)
    _add("layout-volume-fitting", "a fit of a volume of 2e5-voxel sides that has just started",
         both(all_records(0, None), all_records(1, None),
              set_attr("levels", value=[{"tile_blocks": [2, 2, 2], "bits": 7, "stats": {}}] * 2),
              set_attr("layout", "shape", value=[200_000] * 3, consistent=True)),
         base="fitting", absurd=True)
    _add("layout-2e6-complete", "2e6 x 2e6 pixels in a store marked complete",
         set_attr("layout", "shape", value=big, consistent=True), base="complete", absurd=True)


def _record_cases() -> None:
    near, far = NEAR_FILES["records"], FAR_FILES["records"]
    fields = {"sse-NaN": ("sse", math.nan), "count-negative": ("count", -1.0),
              "elapsed-inf": ("elapsed_s", math.inf), "n_mlps-fraction": ("n_mlps", 2.5),
              "steps-fraction": ("steps", 0.5), "done-0": ("done", 0.0), "done-2": ("done", 2.0),
              "intersection-above-union": ("intersection", 1e9),
              "union-above-count": ("union", 1e12), "n_mlps-too-many": ("n_mlps", 5.0),
              "n_mlps-negative": ("n_mlps", -1.0), "n_mlps-huge": ("n_mlps", 1e300)}
    for name, (field, value) in fields.items():
        _add(f"record-{name}", f"record field {field} = {value!r}",
             change_file(far, record_field(field, value)), base="complete")
    _add("record-n_mlps-wrong", "record counts fewer MLPs than the mask holds",
         change_file(far, record_field("n_mlps", 1.0)), base="complete")
    _add("record-digest-flipped", "record checksum altered", change_file(far, flip(0)),
         base="complete")
    model = MODEL_FILES["records"]
    counts = {"fraction": record_field(0, 6.5), "negative": record_field(1, -1.0),
              "NaN": record_field(2, math.nan), "sum-wrong": record_field(0, 1.0),
              "moved": move_count(0, 1), "moved-split": move_count(1, 2),
              "moved-unused": move_count(0, 5)}
    for name, change in counts.items():
        _add(f"record-bank-count-{name}", f"record bank MLP counts: {name}",
             change_file(model, change))
    _add("record-bank-count-added-unused", "a record counts an MLP in a sixth bank",
         change_file(model, move_count(None, 5)))
    _add("record-bank-count-added-level-1", "a level-1 record counts an MLP in a third bank",
         change_file("levels/1/records/0.0.0", move_count(None, 2)))
    _add("record-bank-count-moved-far", "record bank counts moved (out-of-core store)",
         change_file(far, move_count(0, 2)), base="complete")
    _add("record-v2-size", "a record of format 2's size (no bank counts)",
         change_file(far, lambda r: r[:RECORD_BYTES_V2]), base="complete")
    _add("record-v2-size-model", "a format-2-sized record in a saved model",
         change_file(model, lambda r: r[:RECORD_BYTES_V2]))
    _add("record-digest-flipped-near", "record checksum of the tile under the region altered",
         change_file(near, flip(5)), base="complete")
    for name, change in (("truncated", lambda r: r[:-1]), ("too-long", lambda r: r + b"\0"),
                         ("empty", lambda r: b""), ("zeros", lambda r: bytes(len(r))),
                         ("huge", lambda r: r + bytes(10 << 20))):
        _add(f"record-{name}", f"record {name}", change_file(far, change), base="complete")
    _add("record-deleted", "a record deleted from a complete store", remove(far), base="complete")
    _add("record-deleted-level-1", "a level-1 record deleted", remove("levels/1/records/2.2.0"),
         base="complete")
    _add("records-all-deleted", "every level-0 record deleted", all_records(0, None),
         base="complete")
    _add("records-all-zero", "every level-0 record zeroed",
         all_records(0, lambda r: bytes(len(r))), base="complete")
    _add("record-outside-grid", "a record of tile (6, 0) in a 6 x 5 tile grid",
         write_file("levels/0/records/6.0.0", bytes(RECORD_BYTES)), base="complete")
    _add("record-name-garbage", "a file 'a.b.0' among the records",
         write_file("levels/0/records/a.b.0", bytes(RECORD_BYTES)), base="complete")
    _add("record-name-rank", "a record named like a 3-D tile",
         write_file("levels/0/records/0.0.0.0", bytes(RECORD_BYTES)), base="complete")
    _add("record-name-superscript", "a record named '\u00b2.0.0' (a digit to isdigit, not to int)",
         write_file("levels/0/records/\u00b2.0.0", bytes(RECORD_BYTES)), base="complete")
    _add("record-name-arabic-digits", "a record named '\u0660.\u0660.0' (tile (0, 0) to int)",
         write_file("levels/0/records/\u0660.\u0660.0", bytes(RECORD_BYTES)), base="complete")
    _add("record-name-plus", "a record named '+1.0.0'",
         write_file("levels/0/records/+1.0.0", bytes(RECORD_BYTES)), base="complete")
    _add("record-tmp-leftover", "a half-written record of an interrupted writer",
         write_file("levels/0/records/0.0.0.tmp-1a2b3c4d", b"\1\2"), base="complete",
         expect="same")
    _add("records-zattrs", "attributes in the records array",
         write_file("levels/0/records/.zattrs", b"{}"), base="complete", expect="same")
    _add("status-complete-unfinished", "an unfinished fit marked complete",
         set_attr("status", value="complete"), base="fitting")
    done = tile_files(0, FITTING_DONE)
    _add("fitting-record-deleted", "a finished tile's record deleted: the tile is unfinished",
         remove(done["records"]), base="fitting", expect="unfinished")
    for name, change in (("truncated", lambda r: r[:40]), ("empty", lambda r: b""),
                         ("zeros", lambda r: bytes(len(r)))):
        _add(f"fitting-record-{name}", f"a record {name} as by a crash: the tile is unfinished",
             change_file(done["records"], change), base="fitting", expect="unfinished")
    _add("fitting-record-v2-size", "a record of format 2's size (shorter: an unfinished tile)",
         change_file(done["records"], lambda r: r[:RECORD_BYTES_V2]), base="fitting",
         expect="unfinished")
    for name, change in (("too-long", lambda r: r + b"\0"),
                         ("sse-NaN", record_field("sse", math.nan)),
                         ("n_mlps-too-many", record_field("n_mlps", 5.0)),
                         ("digest-flipped", flip(3))):
        _add(f"fitting-record-{name}", f"a record of a store being fitted: {name}",
             change_file(done["records"], change), base="fitting")
    for array in ("params", "scales"):
        _add(f"fitting-{array}-deleted", f"a finished tile's {array} chunk deleted",
             remove(done[array]), base="fitting")
    unfinished = tile_files(0, FAR)
    _add("fitting-orphan-chunks", "chunk files of a tile that has no record (ignored)",
         both(write_file(unfinished["params"], b"garbage"), write_file(unfinished["mask"], b"x")),
         base="fitting", expect="same")


def _chunk_cases() -> None:
    tiles = [("near", NEAR_FILES, "complete"), ("far", FAR_FILES, "complete"),
             ("model", MODEL_FILES, "model"), ("float", MODEL_FILES, "float")]
    tiles += [(f"model-{bank}", tile_files(0, (0, 0), bank), "model") for bank in BANKS0[1:]]
    for label, files, base in tiles:
        for array in ("params", "mask", "scales"):
            if array == "scales" and base == "float":
                continue
            relative = files[array]
            _add(f"{array}-deleted-{label}", f"{array} chunk deleted", remove(relative), base=base)
            _add(f"{array}-truncated-{label}", f"{array} chunk truncated",
                 change_file(relative, lambda r: r[: len(r) // 2]), base=base)
            _add(f"{array}-empty-{label}", f"{array} chunk emptied", write_file(relative, b""),
                 base=base)
            _add(f"{array}-bitflip-{label}", f"{array} chunk payload bits flipped",
                 change_file(relative, flip(-1)), base=base)
            _add(f"{array}-header-flip-{label}", f"{array} chunk header bits flipped",
                 change_file(relative, flip(5)), base=base)
    _add("params-swapped-tiles", "two tiles' params chunks swapped",
         swap(NEAR_FILES["params"], FAR_FILES["params"]), base="complete")
    _add("params-swapped-banks", "the main and lite params chunks of a tile swapped",
         swap(MODEL_FILES["params"], tile_files(0, (0, 0), "lite")["params"]))
    _add("params-uncompressed", "raw codes (a chunk's size) instead of a Blosc chunk",
         lambda path, outside: (path / MODEL_FILES["params"]).write_bytes(
             bytes(ArraySpec.from_zarray(_read_json(path / P0 / ".zarray"), P0).chunk_bytes)))
    _add("params-reencoded-lz4", "a chunk compressed anew with lz4 (the same data)",
         reencode(MODEL_FILES["params"], "lz4"), expect="same")
    _add("scales-reencoded-blosclz", "a scales chunk compressed anew with blosclz (same data)",
         reencode(MODEL_FILES["scales"], "blosclz"), expect="same")
    for array in ("params", "scales"):
        _add(f"{array}-bomb-nbytes", "Blosc header claims 2 GiB decoded",
             change_file(MODEL_FILES[array], blosc_header(nbytes=2**31)), absurd=True)
    _add("params-bomb-blocksize", "Blosc header claims 2 GiB blocks",
         change_file(MODEL_FILES["params"], blosc_header(blocksize=2**31)), absurd=True)
    _add("params-bomb-cbytes", "Blosc header claims 2 GiB stored",
         change_file(MODEL_FILES["params"], blosc_header(cbytes=2**31 - 1)), absurd=True)
    _add("params-bomb-real", "a real Blosc chunk of 64 MiB of zeros",
         lambda path, outside: (path / MODEL_FILES["params"]).write_bytes(_zeros_bomb()),
         absurd=True)
    _add("params-100MB", "a 100 MB params chunk file",
         sparse_file(MODEL_FILES["params"], 100 << 20), absurd=True)
    # float32 weights: finite and of sane magnitude
    for name, value in (("NaN", math.nan), ("inf", math.inf), ("3e38", 3e38), ("1e30", 1e30),
                        ("-1e13", -1e13)):
        for bank in BANKS0:
            suffix = "" if bank == "main" else f"-{bank}"
            _add(f"params-{name}-rehashed{suffix}", f"a {bank} weight {value!r}, checksum recomputed",
                 change_tile(0, (0, 0), set_value(bank, "params", 3, value)), base="float")
    # quantised weights: integers on their grid, scale codes in range
    for bank in BANKS0:
        _add(f"code-above-grid-rehashed-{bank}", f"a {bank} code just above its grid, checksum "
             "recomputed", change_tile(0, (0, 0), set_value(bank, "params", 0, above_grid)))
    _add("code-65535-rehashed", "the largest uint16 code, checksum recomputed",
         change_tile(0, (0, 0), set_value("main", "params", 5, 65535)))
    _add("code-above-grid-rehashed-level-1", "a level-1 code above its grid",
         change_tile(1, (0, 0), set_value("main", "params", 0, above_grid)))
    _add("code-above-grid-rehashed-near", "a code above its grid (out-of-core store)",
         change_tile(0, NEAR, set_value("main", "params", 0, above_grid)), base="complete")
    _add("fitting-code-above-grid-rehashed", "a code above its grid in a store being fitted",
         change_tile(0, FITTING_DONE, set_value("main", "params", 0, above_grid)), base="fitting")
    for value in (32767, 1025, -1025, -32767, -2000):
        for bank in ("main", "split1"):
            _add(f"scale-{value}-rehashed-{bank}", f"a {bank} scale code {value}, checksum "
                 "recomputed", change_tile(0, (0, 0), set_value(bank, "scales", 1, value)))
    _add("scale-1025-rehashed-near", "a scale code 1025 (out-of-core store)",
         change_tile(0, NEAR, set_value("main", "scales", 0, 1025)), base="complete")

    def mask_two(arrays: TileArrays, level: LevelHeader) -> None:
        arrays["main"]["mask"][first_active(arrays, "main")] = 2

    _add("mask-2-rehashed", "a mask value 2, checksum recomputed", change_tile(0, NEAR, mask_two),
         base="complete")
    _add("stray-chunk", "a chunk file outside the array's grid (ignored)",
         write_file(f"{P0}/99.99.0", b"junk"), expect="same")
    _add("chunk-tmp-leftover", "a temporary chunk of an interrupted writer (ignored)",
         write_file(f"{P0}/0.0.0.tmp-0badc0de", b"junk"), expect="same")


def _zeros_bomb() -> bytes:
    from numcodecs import Blosc

    return bytes(Blosc(cname="zstd", clevel=9).encode(np.zeros(16 << 20, dtype="<f4")))


def _link_cases() -> None:
    _add("params-dir-symlink", "levels/0/params is a link to a directory outside the store",
         relink(P0))
    _add("params-dir-symlink-complete", "levels/0/params links outside (out-of-core store)",
         relink(P0), base="complete")
    _add("levels-dir-symlink", "levels is a link to a directory outside", relink("levels"))
    _add("chunk-symlink", "a chunk file is a link to a file outside", relink(MODEL_FILES["params"]))
    _add("record-symlink", "a record is a link to a file outside", relink(FAR_FILES["records"]),
         base="complete")
    _add("zattrs-symlink", ".zattrs is a link to a file outside", relink(".zattrs"))
    _add("zarray-symlink", "a .zarray is a link to a file outside", relink(f"{P0}/.zarray"))
    _add("chunk-symlink-dangling", "a chunk is a dangling link",
         relink(MODEL_FILES["params"], target="nothing-here"))
    _add("chunk-symlink-to-secret", "a chunk links to another file outside",
         both(lambda path, outside: (outside / "secret").write_bytes(b"secret"),
              relink(MODEL_FILES["params"], target="secret")))
    _add("chunk-symlink-loop", "a chunk is a link to itself",
         both(remove(MODEL_FILES["params"]),
              lambda path, outside: os.symlink(path / MODEL_FILES["params"],
                                               path / MODEL_FILES["params"])))
    _add("chunk-fifo", "a chunk file is a named pipe", fifo(MODEL_FILES["params"]))
    _add("record-fifo", "a record is a named pipe", fifo(FAR_FILES["records"]), base="complete")
    _add("zattrs-fifo", ".zattrs is a named pipe", fifo(".zattrs"))
    _add("zarray-fifo", "a .zarray is a named pipe", fifo(f"{P0}/.zarray"))
    _add("chunk-directory", "a chunk file is a directory",
         both(remove(MODEL_FILES["params"]),
              lambda path, outside: (path / MODEL_FILES["params"]).mkdir()))
    _add("record-directory", "a record is a directory holding a record",
         lambda path, outside: (
             os.replace(path / FAR_FILES["records"], outside / "record"),
             (path / FAR_FILES["records"]).mkdir(),
             os.replace(outside / "record", path / FAR_FILES["records"] / "0.0")),
         base="complete")
    _add("chunk-hardlink", "a chunk file shares its inode with a copy outside (same content)",
         hardlink(MODEL_FILES["params"]), expect="same")


_zarray_cases()
_attribute_cases()
_absurd_size_cases()
_record_cases()
_chunk_cases()
_link_cases()
# fmt: on

CASE_NAMES = {case.name: case for case in CASES}


if __name__ == "__main__":  # pragma: no cover - list the corpus
    from collections import Counter

    for case in CASES:
        absurd = "absurd " if case.absurd else ""
        print(f"{case.name:40s} {case.base:9s} {case.expect:12s} {absurd}{case.what}")
    print(len(CASES), dict(Counter(case.expect for case in CASES)))
