"""Decode throughput of a fitted MINER model: full decodes, region decodes and lazy (dask) chunks.

Fits the default :class:`~napari_miner.MinerConfig` (``--max-steps`` to shorten it) to an image
(default: the top-left 1280×1280 crop of scikit-image's ``retina``), or loads a saved model;
``--tile N`` repeats every bank of every level N×N, a model of the image tiled N×N that costs the
same per pixel (e.g. the astronaut fitted with ``--max-steps 40`` and tiled 8×8: a 4096² model
whose blocks are mostly active). With ``--save`` the model is saved and read back, so that chunks
are read from the store as in the viewer. Then reports at level 0:

- full decode throughput (megapixels/s) with an empty (cold) and a filled (warm) estimate cache,
  and through the lazy dask pyramid;
- region decode latency for square regions of growing side, and one dask chunk;
- per level, the first chunk through ``as_pyramid()`` right after opening the model against
  ``decode(level, region)`` of the same pixels right after opening it;
- that a region decode costs what the region costs, not what the image costs: the same 256×256
  region decoded from the model and from models tiled 2×2 and 4×4.

Usage::

    python benchmarks/decode_throughput.py [--image astronaut --max-steps 40 --tile 8]
        [--model fit.miner.zarr] [--save fit.miner.zarr] [--device cpu] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from _common import load_image

import napari_miner as nm
from napari_miner.core.blocks import BlockGrid
from napari_miner.core.layout import InputLayout
from napari_miner.core.model import LevelParams

try:
    from napari_miner.core.estimate_cache import shared_cache
except ImportError:  # a checkout from before the estimate cache (for before/after runs)

    class _NoCache:
        def clear(self) -> None:
            """Nothing is cached."""

    def shared_cache() -> _NoCache:
        """Stands in for the estimate cache of newer checkouts."""
        return _NoCache()


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tiled_bank(bank, factor: int) -> LevelParams:
    """One bank of a level repeated ``factor`` times along each spatial axis."""
    grid = bank.grid
    g = grid.grid_shape
    big = BlockGrid(tuple(s * factor for s in grid.shape), grid.block_size)
    if not isinstance(bank, LevelParams):  # a stored bank: its MLPs, in memory
        every = torch.arange(grid.n_blocks)
        present, weights, biases = bank.gather(every)
        bank = LevelParams(grid, every[present], weights, biases)
    coords = np.unravel_index(bank.block_ids.numpy(), g)
    ids, rows = [], []
    for shift in np.ndindex(*([factor] * len(g))):
        moved = tuple(c + k * n for c, k, n in zip(coords, shift, g, strict=True))
        ids.append(np.ravel_multi_index(moved, big.grid_shape))
        rows.append(np.arange(len(ids[-1])))
    ids_all = np.concatenate(ids)
    order = np.argsort(ids_all)
    take = torch.from_numpy(np.concatenate(rows)[order])
    return LevelParams(
        big,
        torch.from_numpy(ids_all[order]),
        [w[take] for w in bank.weights],
        [b[take] for b in bank.biases],
        bits=bank.bits,
    )


def tiled(model: nm.MinerModel, factor: int) -> nm.MinerModel:
    """The model of the image tiled ``factor`` times per axis: every bank of every level repeated.

    Every level's block grid must be a whole number of blocks, so that the tiled model is a valid
    model of the tiled image up to the seams, and costs the same per pixel.
    """
    layout = model.layout
    spatial_axes = [a for a in range(len(layout.shape)) if a != layout.channel_axis]
    shape = list(layout.shape)
    for a in spatial_axes:
        shape[a] *= factor
    levels = []
    for level in model.levels:
        if any(s % level.grid.block_size for s in level.grid.shape):
            raise SystemExit("tiling needs every level to be a whole number of blocks")
        main = _tiled_bank(level, factor)
        main.extra = tuple(_tiled_bank(bank, factor) for bank in level.extra)
        levels.append(main)
    big_layout = InputLayout(
        tuple(shape),
        layout.dtype,
        layout.channel_axis,
        layout.rgb,
        layout.value_min,
        layout.value_max,
    )
    return nm.MinerModel(big_layout, model.config, levels)


def cold(model_path: str | None, model: nm.MinerModel) -> nm.MinerModel:
    """A freshly opened model (from its store if saved) with an empty estimate cache."""
    shared_cache().clear()
    return nm.load(model_path) if model_path else model


def first_chunk_vs_region(path: str | None, model: nm.MinerModel, level: int, repeats: int):
    """(first-chunk seconds, same-region decode seconds), each right after opening the model."""
    chunk_times, region_times = [], []
    for _ in range(repeats):
        opened = cold(path, model)
        start = time.perf_counter()
        lazy = opened.as_pyramid()[level]
        corner = tuple(min(c[len(c) // 2], s) for c, s in zip(lazy.chunks, lazy.shape, strict=True))
        index = tuple(len(c) // 2 for c in lazy.chunks)
        lazy.blocks[index].compute(scheduler="sync")
        chunk_times.append(time.perf_counter() - start)
        offsets = [sum(c[:i]) for c, i in zip(lazy.chunks, index, strict=True)]
        region = [slice(o, o + c) for o, c in zip(offsets, corner, strict=True)]
        spatial = [a for a in range(lazy.ndim) if a != opened.layout.channel_axis]
        opened = cold(path, model)
        start = time.perf_counter()
        opened.decode(level, region=tuple(region[a] for a in spatial))
        region_times.append(time.perf_counter() - start)
    return statistics.median(chunk_times), statistics.median(region_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved *.miner.zarr to load instead of fitting")
    parser.add_argument("--image", default="retina", help="image to fit (see _common.IMAGES)")
    parser.add_argument("--max-steps", type=int, default=None, help="max_steps of the fit")
    parser.add_argument("--tile", type=int, default=1, help="tile the fitted model N x N")
    parser.add_argument("--save", help="save the (tiled) model here; chunks are then read from it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}, "
        f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    if args.model:
        model = nm.load(args.model)
        print(f"loaded {args.model}: {model}")
    else:
        config = nm.MinerConfig()
        if args.max_steps:
            config = config.replace(max_steps=args.max_steps)
        start = time.perf_counter()
        model = nm.fit(load_image(args.image), config, device=args.device)
        print(f"fitted {args.image} in {time.perf_counter() - start:.1f} s: {model}")
    if args.tile > 1:
        model = tiled(model, args.tile)
        print(f"tiled {args.tile}x{args.tile}: {model}")
    path = args.model if args.tile == 1 else None
    if args.save:
        model.save(args.save)
        path = args.save
        model = nm.load(path)
    counts = ", ".join(f"{lv.n_mlps}/{lv.grid.n_blocks}" for lv in model.levels)
    print(f"MLPs per level (every bank / main blocks): {counts}")

    device = args.device
    h, w = model.level_shape(0)
    rows: list[tuple[str, float, float]] = []  # (what, seconds, megapixels)

    def full_cold() -> None:
        shared_cache().clear()
        model.decode(0, device=device)

    rows.append((f"full decode {h}x{w}, cold cache", timed(full_cold, args.repeats), h * w / 1e6))
    full = timed(lambda: model.decode(0, device=device), args.repeats)
    rows.append((f"full decode {h}x{w}, warm cache", full, h * w / 1e6))

    rng = np.random.default_rng(0)
    for side in (s for s in (128, 256, 512, 1024) if s <= min(h, w)):
        y0, x0 = (int(v) for v in rng.integers(0, [h - side + 1, w - side + 1]))
        region = (slice(y0, y0 + side), slice(x0, x0 + side))
        seconds = timed(lambda r=region: model.decode(0, region=r, device=device), args.repeats)
        rows.append((f"region {side}x{side} (warm)", seconds, side * side / 1e6))

    level0 = model.as_pyramid()[0]
    chunk = timed(lambda: level0.blocks[0, 0].compute(scheduler="sync"), args.repeats)
    c = level0.chunksize
    rows.append((f"one dask chunk {c[0]}x{c[1]} (warm)", chunk, c[0] * c[1] / 1e6))

    print()
    print(f"{'level 0 decode':<40} {'median ms':>10} {'MP/s':>8}")
    for what, seconds, mp in rows:
        print(f"{what:<40} {seconds * 1e3:>10.1f} {mp / seconds:>8.2f}")

    print()
    print("first chunk after opening vs decode(level, region) of the same pixels, also just opened")
    print(f"{'level':<6} {'chunk ms':>10} {'region ms':>10} {'ratio':>6}")
    for level in range(model.n_levels):
        first, same = first_chunk_vs_region(path, model, level, max(3, args.repeats // 2))
        print(f"{level:<6} {first * 1e3:>10.1f} {same * 1e3:>10.1f} {first / same:>6.2f}")

    print()
    print(f"{'256x256 region, level 0, of a':<40} {'median ms':>10} {'MLPs':>8}")
    y0, x0 = (h - 256) // 2, (w - 256) // 2  # the same pixels in every tiled model
    region = (slice(y0, y0 + 256), slice(x0, x0 + 256))
    for factor in (1, 2, 4):
        big = model if factor == 1 else tiled(model, factor)
        seconds = timed(lambda m=big: m.decode(0, region=region, device=device), args.repeats)
        bh, bw = big.level_shape(0)
        n_mlps = sum(lv.n_mlps for lv in big.levels)
        print(f"{f'{bh}x{bw} model':<40} {seconds * 1e3:>10.1f} {n_mlps:>8}")
    import dask

    # last: after torch has run in dask's worker threads, this process's main-thread torch
    # calls are measurably slower (the thread pools stay), which would skew the rows above
    level0 = model.as_pyramid()[0]
    with dask.config.set(scheduler="threads"):
        shared_cache().clear()
        lazy = timed(lambda: level0.compute(), args.repeats)
    what = f"dask level 0, threads ({len(level0.chunks[0])}x{len(level0.chunks[1])} chunks)"
    print()
    print(f"{what:<40} {lazy * 1e3:>10.1f} {h * w / 1e6 / lazy:>8.2f}")

    print(f"# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
