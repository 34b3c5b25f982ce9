"""Decode throughput of a fitted MINER model: full decodes, region decodes and lazy (dask) tiles.

Fits the default :class:`~napari_miner.MinerConfig` to the top-left 1280×1280 crop of scikit-image's
``retina`` (RGB), or loads a saved model, then reports at level 0:

- full decode throughput (megapixels/s), directly and through the lazy dask pyramid;
- region decode latency and throughput for square regions of growing side;
- the latency of one 1024×1024 tile (median of ``--repeats``);
- that a region decode costs what the region costs, not what the image costs: the same 256×256
  region decoded from the 1280² model and from 2560² and 5120² models built by tiling its block
  banks 2×2 and 4×4 (every level's block grid is a whole number of blocks, so the tiled model is a
  valid model of the tiled image up to the seams, and costs the same per pixel).

Usage::

    python benchmarks/decode_throughput.py [--model fit.miner.zarr] [--save fit.miner.zarr]
        [--device cpu] [--threads N] [--repeats 5]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved *.miner.zarr to load instead of fitting")
    parser.add_argument("--save", help="save the fitted model here")
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
        start = time.perf_counter()
        model = nm.fit(load_image("retina"), nm.MinerConfig(), device=args.device)
        print(f"fitted retina 1280x1280 RGB in {time.perf_counter() - start:.1f} s: {model}")
        if args.save:
            model.save(args.save)
    counts = ", ".join(f"{lv.n_mlps}/{lv.grid.n_blocks}" for lv in model.levels)
    print(f"MLPs per level (active/blocks): {counts}")

    device = args.device
    h, w = model.level_shape(0)
    rows: list[tuple[str, float, float]] = []  # (what, seconds, megapixels)

    full = timed(lambda: model.decode(0, device=device), args.repeats)
    rows.append((f"full decode {h}x{w}", full, h * w / 1e6))

    import dask

    level0 = model.as_pyramid()[0]
    with dask.config.set(scheduler="threads"):
        lazy = timed(lambda: level0.compute(), args.repeats)
    rows.append(
        (
            f"dask level 0 ({len(level0.chunks[0])}x{len(level0.chunks[1])} chunks)",
            lazy,
            h * w / 1e6,
        )
    )

    rng = np.random.default_rng(0)
    for side in (s for s in (128, 256, 512, 1024) if s <= min(h, w)):
        y0, x0 = (int(v) for v in rng.integers(0, [h - side + 1, w - side + 1]))
        region = (slice(y0, y0 + side), slice(x0, x0 + side))
        seconds = timed(lambda r=region: model.decode(0, region=r, device=device), args.repeats)
        rows.append((f"region {side}x{side}", seconds, side * side / 1e6))

    chunk = timed(lambda: level0.blocks[0, 0].compute(scheduler="sync"), args.repeats)
    c = level0.chunksize
    rows.append((f"one dask chunk {c[0]}x{c[1]}", chunk, c[0] * c[1] / 1e6))

    print()
    print(f"{'level 0 decode':<34} {'median ms':>10} {'MP/s':>8}")
    for what, seconds, mp in rows:
        print(f"{what:<34} {seconds * 1e3:>10.1f} {mp / seconds:>8.2f}")

    print()
    print(f"{'256x256 region, level 0, of a':<34} {'median ms':>10} {'MLPs':>8}")
    y0, x0 = (h - 256) // 2, (w - 256) // 2  # the same pixels in every tiled model
    region = (slice(y0, y0 + 256), slice(x0, x0 + 256))
    for factor in (1, 2, 4):
        big = model if factor == 1 else tiled(model, factor)
        seconds = timed(lambda m=big: m.decode(0, region=region, device=device), args.repeats)
        bh, bw = big.level_shape(0)
        n_mlps = sum(lv.n_mlps for lv in big.levels)
        print(f"{f'{bh}x{bw} model':<34} {seconds * 1e3:>10.1f} {n_mlps:>8}")
    print(f"# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
