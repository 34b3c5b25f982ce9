"""Hostile model stores: many broken variants of small valid stores, for the loader's tests.

A model store is untrusted input. This module fits three small models once (:func:`build_bases`):

* ``model`` — a tiny in-memory fit saved with ``model.save`` (format 3, one tile per level);
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
import torch

import napari_miner as nm
from napari_miner.core.config import MinerConfig
from napari_miner.core.events import TileFinished
from napari_miner.core.layout import InputLayout
from napari_miner.io.chunks import ArraySpec, read_chunk, write_chunk
from napari_miner.io.schema import DIGEST_BYTES, RECORD_BYTES, level_headers
from napari_miner.io.store import tile_digest

__all__ = ["CASES", "BASES", "Case", "build_bases", "fitting_data", "materialize", "TINY"]

TINY = MinerConfig(n_levels=2, block_size=8, hidden_width=8, max_steps=10)
BASES = ("model", "complete", "fitting")
NEAR = (0, 0)
"""A tile of level 0 of the out-of-core stores under the 8x8 region that the tests decode."""
FAR = (5, 4)
"""A tile of level 0 of the out-of-core stores far from that region."""
FITTING_DONE = (0, 0)
"""A finished level-0 tile of the ``fitting`` store; (5, 4) there is unfinished."""
FIT_KWARGS = dict(device="cpu", memory_budget="64MB", tile_blocks=2)
TWO_MILLION = 2_000_000


def _image(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    signal = sum(np.sin(5 * g + p) for g, p in zip(grids, rng.random(len(shape)) * 6, strict=True))
    return (signal + 0.1 * rng.random(shape)).astype(np.float32)


def fitting_data() -> np.ndarray:
    """The input of the ``complete`` and ``fitting`` stores (96 x 80: 12 x 10 blocks of 8)."""
    return _image((96, 80), seed=1)


def build_bases(directory: Path) -> dict[str, Path]:
    """Fit the three small valid stores into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.miner.zarr" for name in BASES}
    nm.fit(_image((40, 48), seed=0), TINY, device="cpu").save(paths["model"])
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
    edit: Callable[[Path, Path], None]
    base: str = "model"
    expect: str = "error"
    absurd: bool = False


CASES: list[Case] = []


def _add(name: str, what: str, edit: Callable[[Path, Path], None], **options: Any) -> None:
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
def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, allow_nan=True))


def attrs(path: Path) -> dict[str, Any]:
    """The root attributes of a store."""
    return _read_json(path / ".zattrs")


def set_attrs(path: Path, document: Any) -> None:
    """Replace the root attributes of a store."""
    _write_json(path / ".zattrs", document)


def _set_nested(document: Any, keys: tuple, value: Any) -> None:
    for key in keys[:-1]:
        document = document[key]
    if value is _DELETE:
        del document[keys[-1]]
    else:
        document[keys[-1]] = value


_DELETE = object()


def set_attr(*keys: Any, value: Any, consistent: bool = False) -> Callable[[Path, Path], None]:
    """Edit: set (or with ``value=_DELETE`` remove) one nested root attribute."""

    def edit(path: Path, outside: Path) -> None:
        document = attrs(path)
        _set_nested(document, keys, value)
        set_attrs(path, document)
        if consistent:
            make_arrays_consistent(path)

    return edit


def set_zarray(array: str, key: str, value: Any) -> Callable[[Path, Path], None]:
    """Edit: set (or remove) one key of the ``.zarray`` of ``array`` (e.g. ``levels/0/params``)."""

    def edit(path: Path, outside: Path) -> None:
        meta = _read_json(path / array / ".zarray")
        _set_nested(meta, (key,), value)
        _write_json(path / array / ".zarray", meta)

    return edit


def write_file(relative: str, data: bytes) -> Callable[[Path, Path], None]:
    """Edit: replace (or create) a file of the store."""

    def edit(path: Path, outside: Path) -> None:
        (path / relative).write_bytes(data)

    return edit


def sparse_file(relative: str, size: int, prefix: bytes = b"") -> Callable[[Path, Path], None]:
    """Edit: replace a file by a (sparse) one of ``size`` bytes starting with ``prefix``."""

    def edit(path: Path, outside: Path) -> None:
        with open(path / relative, "wb") as handle:
            handle.write(prefix)
            handle.truncate(size)

    return edit


def change_file(relative: str, change: Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    """Edit: rewrite a file's bytes."""

    def edit(path: Path, outside: Path) -> None:
        target = path / relative
        target.write_bytes(change(target.read_bytes()))

    return edit


def remove(relative: str) -> Callable[[Path, Path], None]:
    """Edit: delete a file or directory of the store."""

    def edit(path: Path, outside: Path) -> None:
        target = path / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return edit


def flip(offset: int) -> Callable[[bytes], bytes]:
    """Change: invert the bits of the byte at ``offset`` (negative: from the end)."""

    def change(raw: bytes) -> bytes:
        data = bytearray(raw)
        data[offset] ^= 0xFF
        return bytes(data)

    return change


def blosc_header(
    nbytes: int | None = None, blocksize: int | None = None, cbytes: int | None = None
):
    """Change: overwrite fields of a chunk's Blosc header (decoded size, block size, stored size)."""

    def change(raw: bytes) -> bytes:
        data = bytearray(raw)
        for offset, value in ((4, nbytes), (8, blocksize), (12, cbytes)):
            if value is not None:
                data[offset : offset + 4] = struct.pack("<I", value)
        return bytes(data)

    return change


def record_field(field: str, value: float) -> Callable[[bytes], bytes]:
    """Change: set one float64 field of a tile record."""
    from napari_miner.io.schema import RECORD_FIELDS

    def change(raw: bytes) -> bytes:
        offset = DIGEST_BYTES + 8 * RECORD_FIELDS.index(field)
        return raw[:offset] + struct.pack("<d", value) + raw[offset + 8 :]

    return change


def tile_files(level: int, index: tuple[int, ...]) -> dict[str, str]:
    """The chunk files of a tile (relative paths of its mask, params and record)."""
    key = ".".join(map(str, index))
    base = f"levels/{level}"
    return {
        "mask": f"{base}/mask/{key}",
        "params": f"{base}/params/{key}.0",
        "records": f"{base}/records/{key}.0",
    }


def _spec(path: Path, array: str) -> ArraySpec:
    return ArraySpec.from_zarray(_read_json(path / array / ".zarray"), array)


def change_tile(
    level: int, index: tuple[int, ...], change: Callable[[np.ndarray, np.ndarray], None]
) -> Callable[[Path, Path], None]:
    """Edit: change a tile's decoded mask and params in place, re-encode them and re-hash its record.

    The result is a consistent store (its checksum matches) that holds the changed data.
    """

    def edit(path: Path, outside: Path) -> None:
        files = tile_files(level, index)
        specs = {name: _spec(path, f"levels/{level}/{name}") for name in ("mask", "params")}
        mask = read_chunk(path / f"levels/{level}/mask", specs["mask"], index, "mask").copy()
        params = read_chunk(
            path / f"levels/{level}/params", specs["params"], (*index, 0), "params"
        ).copy()
        change(mask, params)
        write_chunk(path / f"levels/{level}/mask", specs["mask"], index, mask)
        write_chunk(path / f"levels/{level}/params", specs["params"], (*index, 0), params)
        record = bytearray((path / files["records"]).read_bytes())
        record[:DIGEST_BYTES] = tile_digest(mask, params.astype("<f4"))
        record[DIGEST_BYTES + 8 : DIGEST_BYTES + 16] = struct.pack("<d", float(mask.sum()))
        (path / files["records"]).write_bytes(bytes(record))

    return edit


def make_arrays_consistent(path: Path) -> None:
    """Rewrite every ``.zarray`` to what the (edited) attributes imply, as a careful forger would."""
    document = attrs(path)
    config = MinerConfig.from_dict(document["config"])
    layout = InputLayout.from_dict(document["layout"])
    tiles = [tuple(level["tile_blocks"]) for level in document["levels"]]
    for j, header in enumerate(level_headers(layout, config, tiles)):
        for name, spec in header.specs().items():
            directory = path / "levels" / str(j) / name
            directory.mkdir(parents=True, exist_ok=True)
            _write_json(directory / ".zarray", spec.to_zarray())


def both(*edits: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    """Edit: apply several edits in order."""

    def edit(path: Path, outside: Path) -> None:
        for one in edits:
            one(path, outside)

    return edit


def relink(relative: str, target: str | None = None) -> Callable[[Path, Path], None]:
    """Edit: move a file or directory of the store outside it and put a symbolic link in its place.

    ``target`` links to another name outside instead (a dangling link if it does not exist).
    """

    def edit(path: Path, outside: Path) -> None:
        source = path / relative
        moved = outside / (relative.replace("/", "_") + "-" + path.name)
        if target is None:
            shutil.move(source, moved)
        else:
            shutil.rmtree(source) if source.is_dir() else source.unlink()
            moved = outside / target
        os.symlink(moved, source)

    return edit


def fifo(relative: str) -> Callable[[Path, Path], None]:
    """Edit: replace a file by a named pipe (a reader that opened it would block forever)."""

    def edit(path: Path, outside: Path) -> None:
        (path / relative).unlink()
        os.mkfifo(path / relative)

    return edit


def hardlink(relative: str) -> Callable[[Path, Path], None]:
    """Edit: make a file a hard link shared with a copy outside the store (same content)."""

    def edit(path: Path, outside: Path) -> None:
        copy = outside / f"hardlink-{path.name}"
        shutil.copyfile(path / relative, copy)
        (path / relative).unlink()
        os.link(copy, path / relative)

    return edit


def all_records(
    level: int, change: Callable[[bytes], bytes] | None
) -> Callable[[Path, Path], None]:
    """Edit: change (or with ``None`` delete) every record of a level."""

    def edit(path: Path, outside: Path) -> None:
        for record in (path / f"levels/{level}/records").glob("*.0"):
            record.unlink() if change is None else record.write_bytes(change(record.read_bytes()))

    return edit


# fmt: off
# ---------------------------------------------------------------------------- the corpus
P0 = "levels/0/params"
M0 = "levels/0/mask"
NEAR_FILES = tile_files(0, NEAR)
FAR_FILES = tile_files(0, FAR)
MODEL_FILES = tile_files(0, (0, 0))


def _zarray_cases() -> None:
    filters = {
        "pickle": [{"id": "pickle", "protocol": 5}],
        "vlen-utf8": [{"id": "vlen-utf8"}],
        "json2": [{"id": "json2", "encoding": "utf-8"}],
        "fixedscaleoffset": [{"id": "fixedscaleoffset", "offset": 0, "scale": 1, "dtype": "<f4"}],
    }
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
    for dtype in ("|O", "<U4", "<c8", ">f8", ">f4", "<f8", "|V8", "M8[ns]", "float128x"):
        _add(f"zarray-dtype-{dtype}", f"params dtype {dtype}", set_zarray(P0, "dtype", dtype))
    _add("zarray-dtype-structured", "a structured dtype",
         set_zarray(P0, "dtype", [["a", "<f4"], ["b", "|O"]]))
    _add("zarray-dtype-number", "dtype is a number", set_zarray(P0, "dtype", 5))
    _add("zarray-mask-dtype-f4", "the mask holds floats", set_zarray(M0, "dtype", "<f4"))
    _add("zarray-not-json", "params .zarray is not JSON", write_file(f"{P0}/.zarray", b"{'a': 1"))
    _add("zarray-json-list", "params .zarray is a JSON list", write_file(f"{P0}/.zarray", b"[2]"))
    _add("zarray-missing", "params .zarray deleted", remove(f"{P0}/.zarray"))
    _add("zarray-100MB", "a 100 MB params .zarray",
         sparse_file(f"{P0}/.zarray", 100 << 20, b'{"zarr_format": 2, "x": "'), absurd=True)
    _add("array-missing", "the level-1 mask array is gone", remove("levels/1/mask"))
    _add("level-missing", "the level-1 group is gone", remove("levels/1"))


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
              set_attr("levels", value=[{"tile_blocks": [2, 2], "stats": {}}] * 16),
              set_attr("layout", "shape", value=big, consistent=True)),
         base="fitting", absurd=True)
    _add("layout-volume-fitting", "a fit of a volume of 2e5-voxel sides that has just started",
         both(all_records(0, None), all_records(1, None),
              set_attr("levels", value=[{"tile_blocks": [2, 2, 2], "stats": {}}] * 2),
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
    for name, change in (("too-long", lambda r: r + b"\0"),
                         ("sse-NaN", record_field("sse", math.nan)),
                         ("n_mlps-too-many", record_field("n_mlps", 5.0)),
                         ("digest-flipped", flip(3))):
        _add(f"fitting-record-{name}", f"a record of a store being fitted: {name}",
             change_file(done["records"], change), base="fitting")
    _add("fitting-params-deleted", "a finished tile's params chunk deleted",
         remove(done["params"]), base="fitting")
    unfinished = tile_files(0, FAR)
    _add("fitting-orphan-chunks", "chunk files of a tile that has no record (ignored)",
         both(write_file(unfinished["params"], b"garbage"), write_file(unfinished["mask"], b"x")),
         base="fitting", expect="same")


def _chunk_cases() -> None:
    for label, files, base in (("near", NEAR_FILES, "complete"), ("far", FAR_FILES, "complete"),
                               ("model", MODEL_FILES, "model")):
        for array in ("params", "mask"):
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
    near = NEAR_FILES["params"]
    _add("params-swapped-tiles", "two tiles' params chunks swapped",
         lambda path, outside: (
             os.replace(path / near, outside / "swap"),
             os.replace(path / FAR_FILES["params"], path / near),
             os.replace(outside / "swap", path / FAR_FILES["params"])),
         base="complete")
    _add("params-uncompressed", "raw float32 bytes instead of a Blosc chunk",
         write_file(MODEL_FILES["params"], bytes(5 * 6 * 4 * 1000)))
    _add("params-bomb-nbytes", "Blosc header claims 2 GiB decoded",
         change_file(MODEL_FILES["params"], blosc_header(nbytes=2**31)), absurd=True)
    _add("params-bomb-blocksize", "Blosc header claims 2 GiB blocks",
         change_file(MODEL_FILES["params"], blosc_header(blocksize=2**31)), absurd=True)
    _add("params-bomb-cbytes", "Blosc header claims 2 GiB stored",
         change_file(MODEL_FILES["params"], blosc_header(cbytes=2**31 - 1)), absurd=True)
    _add("params-bomb-real", "a real Blosc chunk of 64 MiB of zeros",
         lambda path, outside: (path / MODEL_FILES["params"]).write_bytes(_zeros_bomb()),
         absurd=True)
    _add("params-100MB", "a 100 MB params chunk file",
         sparse_file(MODEL_FILES["params"], 100 << 20), absurd=True)

    def active(mask: np.ndarray, params: np.ndarray) -> tuple:
        return tuple(int(i[0]) for i in np.nonzero(mask))

    def poison(value: float) -> Callable[[np.ndarray, np.ndarray], None]:
        def change(mask: np.ndarray, params: np.ndarray) -> None:
            params[(*active(mask, params), 3)] = value

        return change

    for name, value in (("NaN", math.nan), ("inf", math.inf), ("3e38", 3e38), ("1e30", 1e30)):
        _add(f"params-{name}-rehashed", f"a weight {value!r}, checksum recomputed to match",
             change_tile(0, NEAR, poison(value)), base="complete")
        _add(f"params-{name}-rehashed-model", f"a weight {value!r}, checksum recomputed",
             change_tile(0, (0, 0), poison(value)))
    _add("fitting-params-NaN-rehashed", "a NaN weight in a finished tile of a store being fitted",
         change_tile(0, FITTING_DONE, poison(math.nan)), base="fitting")

    def mask_two(mask: np.ndarray, params: np.ndarray) -> None:
        mask[active(mask, params)] = 2

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


# ------------------------------------------------------------------------------- exercising
REGION = (slice(0, 8), slice(0, 8))
"""The region decoded (level-0 pixels)."""
ACTIONS = ("decode", "region", "pyramid", "labels", "save")
"""What is done with a loaded model, in this order (after ``load``)."""


def _mlps(model: Any) -> np.ndarray:
    """Every level's MLPs as one vector: which blocks have one, then their weights and biases."""
    parts = []
    for level in model.levels:
        present, weights, biases = level.gather(torch.arange(level.grid.n_blocks))
        parts += [present.numpy().astype(np.float32)]
        parts += [t.numpy().reshape(-1) for t in (*weights, *biases)]
    return np.concatenate(parts)


def _run(action: str, model: Any, other: Path) -> np.ndarray:
    from napari_miner.core.overlay import active_block_labels

    if action == "decode":
        return model.decode(0)
    if action == "region":
        return model.decode(0, region=REGION)
    if action == "pyramid":
        return model.as_pyramid()[0][:8, :8].compute(scheduler="synchronous")
    if action == "labels":
        return active_block_labels(model)[0]
    if action == "save":
        model.save(other)
        return nm.load(other).decode(0)
    raise ValueError(action)


def model_outputs(model: Any) -> dict[str, np.ndarray]:
    """What a valid store gives for every action (``save``: the decode of the saved copy)."""
    outputs = {"n_mlps": np.array([level.n_mlps for level in model.levels]), "mlps": _mlps(model)}
    outputs.update({a: _run(a, model, Path()) for a in ACTIONS if a != "save"})
    outputs["save"] = outputs["decode"]
    return outputs


def _compare(found: np.ndarray, expected: np.ndarray) -> str:
    found = np.asarray(found)
    if found.shape != expected.shape:
        return f"different (shape {found.shape} instead of {expected.shape})"
    if found.dtype == expected.dtype and np.array_equal(found, expected):
        return "same"
    if found.dtype != expected.dtype and np.array_equal(found.astype(expected.dtype), expected):
        return f"converted to {found.dtype.str}"
    return "different"


def _describe(error: BaseException) -> str:
    return f"error {type(error).__name__}: {error}"


def outcomes(
    path: Path, other: Path, expected: dict[str, np.ndarray], max_pixels: int = 10**7
) -> dict[str, str]:
    """Load the store at ``path`` and do every action; how each compares with ``expected``.

    Values are ``"same"``, ``"converted to <dtype>"``, ``"different..."``, ``"skipped"`` or
    ``"error <Type>: <message>"``. The full decode and the save are skipped for a model larger than
    ``max_pixels`` (they would legitimately need memory in proportion to its size).
    """
    result: dict[str, str] = {}
    try:
        model = nm.load(path)
    except Exception as error:  # noqa: BLE001 - every exception is an outcome here
        return {"load": _describe(error)}
    result["load"] = "ok"
    counts = np.array([level.n_mlps for level in model.levels])
    result["n_mlps"] = _compare(counts, expected["n_mlps"])
    large = math.prod(model.shape) > max_pixels
    if not large:
        try:
            result["mlps"] = _compare(_mlps(model), expected["mlps"])
        except Exception as error:  # noqa: BLE001
            result["mlps"] = _describe(error)
    for action in ACTIONS:
        if large and action in ("decode", "save"):
            result[action] = "skipped"
            continue
        try:
            result[action] = _compare(_run(action, model, other), expected[action])
        except Exception as error:  # noqa: BLE001
            result[action] = _describe(error)
    return result


def limit_address_space(headroom: int) -> int:
    """Limit this process's address space to its current size plus ``headroom`` bytes (Linux)."""
    import resource

    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = size + headroom
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


def child_main(spec_file: str, result_file: str) -> None:
    """Run cases under a memory limit (in a subprocess): see ``test_hostile_stores.py``."""
    import dask.array  # noqa: F401 - imported before the limit, as a running viewer would have
    import numcodecs.blosc  # noqa: F401
    import zarr  # noqa: F401

    import napari_miner.core.overlay  # noqa: F401
    import napari_miner.io.lazy  # noqa: F401
    import napari_miner.io.legacy  # noqa: F401

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_file).read_text())
    expected = {}
    for base, npz in spec["expected"].items():
        with np.load(npz) as data:
            expected[base] = {key: data[key] for key in data.files}
    warm = spec["warm_up"]  # a valid store: everything a load and a decode touch is set up
    outcomes(Path(warm["path"]), Path(warm["other"]), expected[warm["base"]])
    limit_address_space(int(spec["headroom"]))
    try:  # the limit works: memory in proportion to a claim of 2 GiB is refused
        np.ones(2 << 30, dtype=np.uint8)
        effective = False
    except MemoryError:
        effective = True
    results: dict[str, Any] = {"limit effective": effective}
    results.update(
        {
            case["name"]: outcomes(Path(case["path"]), Path(case["other"]), expected[case["base"]])
            for case in spec["cases"]
        }
    )
    Path(result_file).write_text(json.dumps(results))


def summary() -> dict[str, int]:
    """Number of cases per expectation (for the report)."""
    counts: dict[str, int] = {}
    for case in CASES:
        counts[case.expect] = counts.get(case.expect, 0) + 1
    return counts


if __name__ == "__main__":  # pragma: no cover - list the corpus, or run cases as a child
    import sys

    torch.set_num_threads(1)
    if len(sys.argv) == 3:
        child_main(sys.argv[1], sys.argv[2])
        sys.exit(0)
    for case in CASES:
        print(
            f"{case.name:40s} {case.base:9s} {case.expect:12s} {'absurd ' if case.absurd else ''}"
            f"{case.what}"
        )
    print(len(CASES), summary())
