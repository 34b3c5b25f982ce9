"""The tile records of a model store: which tiles are finished, their checksums and statistics.

Every finished tile of a level has a record (``levels/{j}/records``, :data:`RECORD_BYTES` bytes): the
SHA-256 of the tile's arrays as stored, then its statistics and the MLP count of each bank. A record
is written after the tile's data, so a tile without one is unfinished. :func:`read_records` reads and
checks a level's records when a store is opened (see :mod:`napari_miner.io.schema`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import ModelFormatError
from ..core.metrics import psnr_from_mse
from .chunks import read_file
from .schema import (
    DIGEST_BYTES,
    MAX_BANKS,
    RECORD_BYTES,
    RECORD_FIELDS,
    LevelHeader,
    StoreHeader,
    StoreListing,
)

__all__ = ["TileRecord", "read_records", "records_stats"]


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
    bank_mlps: tuple[int, ...] = ()
    """MLPs of each bank (format 3; they add up to ``n_mlps``)."""

    @staticmethod
    def is_crash_artefact(raw: bytes, size: int = RECORD_BYTES) -> bool:
        """Whether ``raw`` is what a crash can leave of a record being written (short or zeros)."""
        return len(raw) < size or not any(raw)

    @classmethod
    def decode(cls, raw: bytes, size: int = RECORD_BYTES) -> TileRecord:
        """Parse the bytes of a record of ``size`` bytes (raises ``ValueError`` if invalid)."""
        if len(raw) != size:
            raise ValueError(f"{len(raw)} bytes instead of {size}")
        values = np.frombuffer(raw[DIGEST_BYTES:], dtype="<f8")
        banks = [float(v) for v in values[len(RECORD_FIELDS) :]]
        fields = dict(
            zip(RECORD_FIELDS, (float(v) for v in values[: len(RECORD_FIELDS)]), strict=True)
        )
        if not all(math.isfinite(v) and v >= 0 and v == int(v) for v in banks):
            raise ValueError("a bank's MLP count is not a non-negative integer")
        if banks and sum(banks) != fields["n_mlps"]:
            raise ValueError("the banks' MLP counts do not add up to n_mlps")
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
            tuple(int(v) for v in banks),
        )  # fmt: skip

    def encode(self) -> bytes:
        """The record's bytes (checksum first, then the fields and the banks' MLP counts)."""
        counts = list(self.bank_mlps) + [0] * (MAX_BANKS - len(self.bank_mlps))
        values = [
            1.0, self.n_mlps, self.sse, self.count, self.steps, self.elapsed_s,
            self.intersection, self.union, *counts,
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
            blocks = sum(
                math.prod(
                    min(t, g - i * t)
                    for t, g, i in zip(bank.tile_blocks, bank.grid.grid_shape, index, strict=True)
                )
                for bank in info.banks
            )
            if record.n_mlps > blocks:
                raise ValueError(f"{record.n_mlps} MLPs in a tile of {blocks} blocks")
            if any(record.bank_mlps[len(info.banks) :]):
                raise ValueError(f"it counts MLPs of banks that level {level} does not have")
        except ValueError as error:
            raise ModelFormatError(
                f"{where}: the record of tile {index} of level {level} ({name}) is damaged: {error}"
            ) from None
        chunk = ".".join(map(str, index))
        for name in info.specs():
            if name == "records":
                continue
            file = f"levels/{level}/{name}/{chunk}" + ("" if name.endswith("/mask") else ".0")
            if not listing.has(file):
                raise ModelFormatError(
                    f"{where}: tile {index} of level {level} is recorded as finished but its "
                    f"{name} chunk {file} is missing (damaged store)"
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
