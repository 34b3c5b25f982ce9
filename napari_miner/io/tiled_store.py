"""Tiled model stores (format version 2): written tile by tile, read tile by tile.

An out-of-core fit writes its model while it trains. On-disk layout (zarr format 2)::

    model.miner.zarr/
        .zattrs                  format, format_version = 2, storage = "tiled", status
                                 ("fitting" or "complete"), config, layout, metadata, input
                                 (shape, dtype, digest), levels (shape, block_size, tile_blocks
                                 and, once complete, stats per level)
        levels/{j}/mask          (*grid) uint8, 1 where a block has an MLP
        levels/{j}/weight_{l}    (*grid, out_l, in_l) float32, zeros where a block has none
        levels/{j}/bias_{l}      (*grid, out_l, 1) float32
        levels/{j}/tiles         (*tile grid, 104) uint8, one uncompressed record per tile

Every array is chunked by tile, so a tile is written to files of its own (tiles can be written by
several processes at once) and read without touching its neighbours. A tile's record holds the
SHA-256 of the tile's mask, weights and biases followed by its statistics; it is written last, so a
tile counts as finished only once all its data is on disk. A process that dies mid-tile leaves a tile
without a record, which a resumed fit trains again, and which readers treat as having no MLPs.
When a finished tile is read its checksum is verified, so a damaged chunk is reported, never decoded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..core.blocks import BlockGrid
from ..core.config import MinerConfig
from ..core.errors import MinerError, ModelFormatError
from ..core.layout import InputLayout
from ..core.metrics import psnr_from_mse
from ..core.mlp_bank import layer_sizes
from ..core.model import PyramidModel
from ..core.pyramid import level_shapes
from ..core.tiles import tile_blocks_region, tile_grid, tile_indices

__all__ = ["TILED_FORMAT_VERSION", "TiledStore", "StoredLevel"]

TILED_FORMAT_VERSION = 2
"""Format version of tiled stores."""

_RECORD_FIELDS = ("done", "n_mlps", "sse", "count", "steps", "elapsed_s", "intersection", "union")
_DIGEST_BYTES = 32
_RECORD_BYTES = _DIGEST_BYTES + 8 * len(_RECORD_FIELDS)
_DEFAULT_CACHE_BYTES = 256 << 20

M = TypeVar("M", bound=PyramidModel)


def _compressor() -> Any:
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)


def tile_digest(
    mask: np.ndarray, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]
) -> bytes:
    """SHA-256 of a tile's mask, weights and biases (little-endian, C order, in that order)."""
    digest = hashlib.sha256()
    for array in (mask, *weights, *biases):
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        digest.update(data.view(np.uint8).reshape(-1))
    return digest.digest()


class TiledStore:
    """A model store written and read tile by tile.

    Create one with :meth:`create`, open an existing one with :meth:`open`.
    """

    def __init__(self, path: Path, group: Any, attributes: dict[str, Any]) -> None:
        self.path = path
        self._group = group
        self.attributes = attributes
        self.config = MinerConfig.from_dict(attributes["config"])
        self.layout = InputLayout.from_dict(attributes["layout"])
        self.grids = level_shapes_grids(self.layout, self.config)
        self.tile_blocks = [
            tuple(int(t) for t in info["tile_blocks"]) for info in attributes["levels"]
        ]

    # ------------------------------------------------------------------------- opening
    @classmethod
    def create(
        cls,
        path: str | PathLike[str],
        layout: InputLayout,
        config: MinerConfig,
        tile_blocks: Sequence[Sequence[int]],
        input_info: dict[str, Any],
        metadata: dict[str, Any],
    ) -> TiledStore:
        """Create an empty tiled store (every level's arrays, no tile finished).

        The store is built in a temporary sibling directory and renamed into place, so ``path``
        never holds a store without its attributes.
        """
        import zarr
        from zarr.storage import LocalStore

        from .store import FORMAT_NAME, _new_sibling, _to_json

        target = Path(os.fspath(path))
        temporary = _new_sibling(target.resolve(), "tmp")
        try:
            group = zarr.open_group(store=LocalStore(str(temporary)), mode="w", zarr_format=2)
            levels = []
            for j, (grid, tiles) in enumerate(
                zip(level_shapes_grids(layout, config), tile_blocks, strict=True)
            ):
                tiles = tuple(int(t) for t in tiles)
                ndim = grid.ndim
                sizes = layer_sizes(
                    ndim, config.width_at(j), config.hidden_layers, layout.n_channels
                )
                group.create_array(
                    f"levels/{j}/mask", shape=grid.grid_shape, dtype="u1", chunks=tiles,
                    compressors=_compressor(), fill_value=0,
                )  # fmt: skip
                for index, (n_out, n_in) in enumerate(sizes):
                    for kind, tail in (("weight", (n_out, n_in)), ("bias", (n_out, 1))):
                        group.create_array(
                            f"levels/{j}/{kind}_{index}", shape=(*grid.grid_shape, *tail),
                            dtype="<f4", chunks=(*tiles, *tail), compressors=_compressor(),
                            fill_value=0.0,
                        )  # fmt: skip
                n_tiles = tile_grid(grid, tiles)
                group.create_array(
                    f"levels/{j}/tiles", shape=(*n_tiles, _RECORD_BYTES), dtype="u1",
                    chunks=(*([1] * ndim), _RECORD_BYTES), compressors=None, fill_value=0,
                )  # fmt: skip
                levels.append(
                    {
                        "shape": list(grid.shape),
                        "block_size": grid.block_size,
                        "tile_blocks": list(tiles),
                    }
                )
            attributes = {
                "format": FORMAT_NAME,
                "format_version": TILED_FORMAT_VERSION,
                "storage": "tiled",
                "status": "fitting",
                "config": _to_json(config.to_dict(), "config"),
                "layout": _to_json(layout.to_dict(), "layout"),
                "input": _to_json(input_info, "input"),
                "metadata": _to_json(metadata, "metadata"),
                "levels": levels,
            }
            group.attrs.update(attributes)
            os.replace(temporary, target)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return cls.open(target, mode="r+")

    @classmethod
    def open(cls, path: str | PathLike[str], mode: str = "r") -> TiledStore:
        """Open a tiled store (``mode="r"`` to read, ``"r+"`` to add tiles).

        Raises
        ------
        ModelFormatError
            If ``path`` is not a tiled napari-miner store or its attributes are invalid.
        """
        import zarr
        from zarr.storage import LocalStore

        from .store import _from_json

        location = Path(os.fspath(path))
        try:
            group = zarr.open_group(
                store=LocalStore(str(location), read_only=mode == "r"), mode=mode
            )
            attributes = _from_json(group.attrs.asdict())
        except Exception as error:
            raise ModelFormatError(f"{location} is not a readable model store: {error}") from error
        if attributes.get("storage") != "tiled":
            raise ModelFormatError(f"{location} is not a tiled model store")
        try:
            return cls(location, group, attributes)
        except (MinerError, KeyError, TypeError, ValueError) as error:
            raise ModelFormatError(
                f"{location}: invalid tiled-store attributes: {error}"
            ) from error

    # ---------------------------------------------------------------------- description
    @property
    def complete(self) -> bool:
        """Whether every level was trained (the fit finished)."""
        return self.attributes.get("status") == "complete"

    @property
    def n_levels(self) -> int:
        """Number of pyramid levels."""
        return len(self.grids)

    def tiles(self, level: int) -> list[tuple[int, ...]]:
        """Every tile position of ``level``, in C order."""
        return tile_indices(self.grids[level], self.tile_blocks[level])

    def records(self, level: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Finished-tile mask (over the tile grid) and every record field of ``level``.

        A record that cannot be read (a tile whose writer died while writing it) is unfinished.
        """
        array = self._group[f"levels/{level}/tiles"]
        try:
            raw = np.asarray(array[...])
        except Exception:  # a truncated record chunk: read tile by tile, dropping the bad ones
            raw = np.zeros(array.shape, dtype=np.uint8)
            for index in self.tiles(level):
                try:
                    raw[index] = np.asarray(array[index])
                except Exception:
                    pass
        values = raw[..., _DIGEST_BYTES:].copy().view("<f8")
        fields = {name: values[..., k] for k, name in enumerate(_RECORD_FIELDS)}
        return fields["done"] == 1, fields

    def done_tiles(self, level: int) -> set[tuple[int, ...]]:
        """Positions of the finished tiles of ``level``."""
        done, _ = self.records(level)
        return {tuple(int(i) for i in index) for index in np.argwhere(done)}

    def level_stats(self, level: int) -> dict[str, Any]:
        """Statistics of ``level`` summed over its finished tiles."""
        done, fields = self.records(level)
        count = float(fields["count"][done].sum())
        sse = float(fields["sse"][done].sum())
        stats: dict[str, Any] = {
            "n_blocks": self.grids[level].n_blocks,
            "n_mlps": int(fields["n_mlps"][done].sum()),
            "tiles_done": int(done.sum()),
            "n_tiles": int(done.size),
            "steps": int(fields["steps"][done].max(initial=0)),
            "elapsed_s": float(fields["elapsed_s"][done].sum()),
        }
        if count:
            stats["psnr"] = psnr_from_mse(sse / count)
        union = float(fields["union"][done].sum())
        if self.config.iou_threshold is not None and count:
            stats["iou"] = 1.0 if union == 0 else float(fields["intersection"][done].sum()) / union
        return stats

    # -------------------------------------------------------------------------- writing
    def write_tile(
        self,
        level: int,
        index: Sequence[int],
        mask: np.ndarray,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        record: dict[str, float],
    ) -> None:
        """Write a finished tile: its data first, its record (checksum and statistics) last."""
        region = tile_blocks_region(self.grids[level], self.tile_blocks[level], index)
        expected = tuple(r.stop - r.start for r in region)
        if mask.shape != expected:
            raise ModelFormatError(
                f"tile {tuple(index)} of level {level} has shape {mask.shape}, expected {expected}"
            )
        group = self._group
        group[f"levels/{level}/mask"][region] = mask
        for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
            group[f"levels/{level}/weight_{layer}"][region] = w
            group[f"levels/{level}/bias_{layer}"][region] = b
        values = np.array([float(record.get(name, 0.0)) for name in _RECORD_FIELDS], dtype="<f8")
        values[0] = 1.0
        raw = np.concatenate(
            [
                np.frombuffer(tile_digest(mask, weights, biases), dtype=np.uint8),
                values.view(np.uint8),
            ]
        )
        group[f"levels/{level}/tiles"][tuple(int(i) for i in index)] = raw

    def prune_threshold(self, level: int) -> float | None:
        """The residual energy above which blocks of ``level`` get an MLP, once decided."""
        value = self.attributes["levels"][level].get("prune_threshold")
        return None if value is None else float(value)

    def set_prune_threshold(self, level: int, value: float) -> None:
        """Record the pruning threshold of ``level`` (before any of its tiles is trained)."""
        from .store import _to_json

        levels = [dict(info) for info in self.attributes["levels"]]
        levels[level]["prune_threshold"] = _to_json(float(value), "prune threshold")
        self._group.attrs.update({"levels": levels})
        self.attributes["levels"] = _from_json_levels(levels)

    def finish(self, metadata: dict[str, Any]) -> None:
        """Mark the fit complete and record per-level statistics and the final metadata."""
        from .store import _to_json

        levels = []
        for j, info in enumerate(self.attributes["levels"]):
            levels.append({**info, "stats": _to_json(self.level_stats(j), f"level {j} stats")})
        update = {
            "status": "complete",
            "levels": levels,
            "metadata": _to_json(metadata, "metadata"),
        }
        self._group.attrs.update(update)
        self.attributes.update(update)

    # -------------------------------------------------------------------------- reading
    def read_tile(
        self, level: int, index: Sequence[int]
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """A finished tile's mask, weights and biases, verified against its checksum.

        Raises
        ------
        ModelFormatError
            If the tile's data is missing, unreadable or does not match its checksum.
        """
        index = tuple(int(i) for i in index)
        region = tile_blocks_region(self.grids[level], self.tile_blocks[level], index)
        n_layers = self.config.hidden_layers + 2
        group = self._group
        try:
            record = np.asarray(group[f"levels/{level}/tiles"][index])
            mask = np.asarray(group[f"levels/{level}/mask"][region])
            weights = [
                np.asarray(group[f"levels/{level}/weight_{k}"][region]) for k in range(n_layers)
            ]
            biases = [
                np.asarray(group[f"levels/{level}/bias_{k}"][region]) for k in range(n_layers)
            ]
        except Exception as error:
            raise ModelFormatError(
                f"{self.path}: tile {index} of level {level} cannot be read: {error}"
            ) from error
        if tile_digest(mask, weights, biases) != record[:_DIGEST_BYTES].tobytes():
            raise ModelFormatError(
                f"{self.path}: tile {index} of level {level} does not match its checksum: the store "
                "is damaged (a chunk file is missing or corrupted)"
            )
        return mask, weights, biases

    def model(self, model_class: Callable[..., M], cache_bytes: int = _DEFAULT_CACHE_BYTES) -> M:
        """The model in the store, its levels read tile by tile on demand.

        Unfinished tiles have no MLPs: a store that is still being fitted gives the model trained
        so far.
        """
        from .store import _from_json

        per_level = max(1, cache_bytes // self.n_levels)
        levels = [StoredLevel(self, j, per_level) for j in range(self.n_levels)]
        metadata = dict(_from_json(self.attributes.get("metadata", {})))
        metadata["fit_status"] = self.attributes.get("status")
        return model_class(self.layout, self.config, levels, metadata)


def _from_json_levels(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from .store import _from_json

    return _from_json(levels)


def level_shapes_grids(layout: InputLayout, config: MinerConfig) -> list[BlockGrid]:
    """Block grids of every level of a fit of ``layout`` with ``config``."""
    shapes = level_shapes(layout.spatial_shape, config.n_levels)
    return [BlockGrid(shape, config.block_size) for shape in shapes]


class StoredLevel:
    """One level of a tiled store, read tile by tile when decoding needs it (a ``LevelBank``).

    Finished tiles are verified when read and kept in a least-recently-used cache of at most
    ``cache_bytes``; unfinished tiles have no MLPs.
    """

    def __init__(self, store: TiledStore, level: int, cache_bytes: int) -> None:
        self.store = store
        self.level = level
        self.grid = store.grids[level]
        self.tile_blocks = store.tile_blocks[level]
        self._cache: OrderedDict[tuple[int, ...], tuple[Any, ...]] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._lock = threading.Lock()
        self.refresh()
        self._sizes = layer_sizes(
            self.grid.ndim,
            store.config.width_at(level),
            store.config.hidden_layers,
            store.layout.n_channels,
        )
        self._per_mlp = sum(o * i + o for o, i in self._sizes)

    def refresh(self) -> None:
        """Re-read which tiles are finished (for a store that is still being fitted)."""
        self._done, fields = self.store.records(self.level)
        self._n_mlps = int(fields["n_mlps"][self._done].sum())
        self.stats = self.store.level_stats(self.level)

    def fingerprint(self) -> str:
        """Identity of what the level decodes to: the store's path and the finished tiles' records."""
        records = np.asarray(self.store._group[f"levels/{self.level}/tiles"][...])
        digest = hashlib.blake2b(records.tobytes(), digest_size=16).hexdigest()
        return f"{self.store.path.resolve()}:{self.level}:{digest}"

    @property
    def n_mlps(self) -> int:
        """Blocks that hold an MLP (in finished tiles)."""
        return self._n_mlps

    @property
    def n_parameters(self) -> int:
        """Every weight and bias of the level."""
        return self._n_mlps * self._per_mlp

    def active_mask(self) -> np.ndarray:
        """Boolean mask over the block grid of the blocks with an MLP (finished tiles only)."""
        mask = np.zeros(self.grid.grid_shape, dtype=bool)
        for index in np.argwhere(self._done):
            region = tile_blocks_region(self.grid, self.tile_blocks, index)
            mask[region] = self._tile(tuple(int(i) for i in index))[0]
        return mask

    def gather(
        self, block_ids: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """MLPs of the given flat block indices (see ``LevelBank.gather``)."""
        ids = block_ids.cpu().numpy()
        coords = np.unravel_index(ids, self.grid.grid_shape)
        tiles = np.stack([c // t for c, t in zip(coords, self.tile_blocks, strict=True)], axis=1)
        local = np.stack([c % t for c, t in zip(coords, self.tile_blocks, strict=True)], axis=1)
        present = np.zeros(ids.shape[0], dtype=bool)
        n_layers = self.store.config.hidden_layers + 2
        rows: list[list[np.ndarray]] = [[] for _ in range(2 * n_layers)]
        order: list[np.ndarray] = []
        for tile in np.unique(tiles, axis=0):
            key = tuple(int(i) for i in tile)
            if not self._done[key]:
                continue
            mask, weights, biases = self._tile(key)
            members = np.nonzero((tiles == tile).all(axis=1))[0]
            where = tuple(local[members].T)
            has = mask[where].astype(bool)
            members, where = members[has], tuple(w[has] for w in where)
            present[members] = True
            order.append(members)
            for k, array in enumerate((*weights, *biases)):
                rows[k].append(array[where])
        shapes = [(o, i) for o, i in self._sizes] + [(o, 1) for o, _ in self._sizes]
        if order:
            sort = np.argsort(np.concatenate(order), kind="stable")
            tensors = [torch.from_numpy(np.concatenate(r)[sort]) for r in rows]
        else:
            tensors = [torch.zeros((0, *shape)) for shape in shapes]
        return torch.from_numpy(present), tensors[:n_layers], tensors[n_layers:]

    def _tile(self, key: tuple[int, ...]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]  # type: ignore[return-value]
        tile = self.store.read_tile(self.level, key)
        size = tile[0].nbytes + sum(a.nbytes for a in (*tile[1], *tile[2]))
        with self._lock:
            self._cache[key] = tile
            self._cached += size
            while self._cached > self._cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached -= old[0].nbytes + sum(a.nbytes for a in (*old[1], *old[2]))
        return tile


def is_tiled_store(path: str | PathLike[str]) -> bool:
    """Whether ``path`` holds a tiled model store (without validating it)."""
    from .store import _root_attributes_raw

    return _root_attributes_raw(Path(os.fspath(path))).get("storage") == "tiled"


def store_size(path: str | PathLike[str]) -> int:
    """Bytes on disk of a store directory."""
    return sum(
        os.path.getsize(os.path.join(directory, name))
        for directory, _, files in os.walk(path)
        for name in files
    )
