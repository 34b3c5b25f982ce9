"""Out-of-core fits of generated gigapixel images: peak memory, input throughput, time per level.

Generates a deterministic uint8 zarr image that looks like a slide (smooth background, textured
cells with sharp edges, fine fibres), chunk by chunk, then fits it out of core with a small step count
and reports, per size: the peak RSS of the fitting process, the input throughput of the streamed scan
and target pyramid, the time and the PSNR of every level, and the store size. Every size is fitted in
its own process so that its peak RSS is its own.

    python benchmarks/fit_gigapixel.py                       # 8192², 16384², 32768² on CPU
    python benchmarks/fit_gigapixel.py --sizes 8192 --device cuda --memory-budget 8GiB
    python benchmarks/fit_gigapixel.py --sizes 8192 --set weight_bits=null   # float32 store
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import config_overrides, folder_size

GENERATE_CHUNK = 4096
STORE_CHUNK = 1024


# ------------------------------------------------------------------------------ the image
def _cells(size: int, seed: int = 7) -> np.ndarray:
    """Discs (y, x, radius, brightness, texture frequency): about one per 2^16 pixels."""
    rng = np.random.default_rng(seed)
    n = max(1, size * size // 65536)
    return np.stack(
        [
            rng.random(n) * size,
            rng.random(n) * size,
            rng.uniform(20, 160, n),
            rng.uniform(-70, 70, n),
            rng.uniform(0.15, 0.9, n),
        ],
        axis=1,
    )


def generate_chunk(y0: int, x0: int, shape: tuple[int, int], size: int) -> np.ndarray:
    """The pixels ``[y0:y0+h, x0:x0+w]`` of the ``size``² image (deterministic, position-only)."""
    h, w = shape
    y = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
    x = np.arange(x0, x0 + w, dtype=np.float32)[None, :]
    scale = 2 * np.pi / 8192
    image = 120 + 35 * np.sin(y * scale * 1.3 + 0.4) * np.cos(x * scale * 0.9 + 1.1)
    image = image + 20 * np.sin((x + 0.6 * y) * scale * 3.1)
    for cy, cx, radius, level, frequency in _cells(size):
        if cy + radius < y0 or cy - radius > y0 + h or cx + radius < x0 or cx - radius > x0 + w:
            continue
        ys = slice(max(int(cy - radius) - y0, 0), min(int(cy + radius) + 1 - y0, h))
        xs = slice(max(int(cx - radius) - x0, 0), min(int(cx + radius) + 1 - x0, w))
        dy, dx = y[ys] - cy, x[:, xs] - cx
        inside = dy * dy + dx * dx < radius * radius
        texture = 18 * np.sin(dy * frequency) * np.sin(dx * frequency * 1.3)
        patch = image[ys, xs]
        image[ys, xs] = np.where(inside, patch + level + texture, patch)
    fibres = np.abs(np.sin((x * 0.7 - y) * 0.011)) < 0.02
    image = np.where(fibres, image - 60, image)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image(path: Path, size: int) -> float:
    """Write the ``size``² image to a zarr array at ``path``; returns the seconds it took."""
    import dask.array as da

    started = time.perf_counter()
    chunk = min(GENERATE_CHUNK, size)
    template = da.zeros((size, size), chunks=chunk, dtype=np.uint8)

    def block(_: np.ndarray, block_info: dict) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return generate_chunk(y0, x0, (y1 - y0, x1 - x0), size)

    image = template.map_blocks(block, dtype=np.uint8)
    image.rechunk(STORE_CHUNK).to_zarr(str(path), overwrite=True)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------- fitting
def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB.

    Read from ``VmHWM`` (per address space, so it starts afresh at ``exec``); ``getrusage``'s
    ``ru_maxrss`` would include the parent process's memory before it started this one.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_io() -> dict[int, dict[str, float]]:
    """Seconds per level spent reading a tile's inputs and writing its results, from now on.

    Wraps the engine's reads (a tile's target and the coarser estimate under it:
    ``TileWork._inputs``) and writes (its estimate, ``write_estimate``; its MLPs, quantised,
    compressed and written: ``StoreWriter.write_tile``).
    """
    from napari_miner.fitting import sinks, sources, work

    seconds: dict[int, dict[str, float]] = {}

    def timed(cls: type, name: str, kind: str) -> None:
        inner = getattr(cls, name)

        def wrapper(self, level, *args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(self, level, *args, **kwargs)
            finally:
                per_level = seconds.setdefault(int(level), {"read": 0.0, "write": 0.0})
                per_level[kind] += time.perf_counter() - started

        setattr(cls, name, wrapper)

    timed(work.TileWork, "_inputs", "read")
    timed(sources.ZarrTargets, "write_estimate", "write")
    timed(sinks.StoreWriter, "write_tile", "write")
    return seconds


def fit_one(args: argparse.Namespace) -> dict:
    """Fit one size (in this process) and return the measurements."""
    import torch

    import napari_miner as nm
    from napari_miner.core.events import ScaleFinished, ScaleStarted, TileFinished
    from napari_miner.io.scan import scan_input
    from napari_miner.io.source import open_input
    from napari_miner.io.store import ModelStore

    torch.set_num_threads(args.threads)
    size = args.size
    work = Path(args.work)
    image_path = work / f"image-{size}.zarr"
    store = work / f"fit-{size}.miner.zarr"
    shutil.rmtree(store, ignore_errors=True)
    config = nm.MinerConfig(
        max_steps=args.steps, check_every=args.check_every, progress_every=10**6,
        **config_overrides(args.set),
    )  # fmt: skip

    rss_before = peak_rss_mb()
    started = time.perf_counter()
    source = open_input(str(image_path))
    scan_started = time.perf_counter()
    scan_input(source.array)
    scan_s = time.perf_counter() - scan_started

    levels: dict[int, dict] = {}
    io_seconds = time_io()
    level_started = time.perf_counter()
    run = nm.fit_iter(
        str(image_path), config, device=args.device, store=store, memory_budget=args.memory_budget
    )
    tiles = 0
    first_event = None
    for event in run:
        if first_event is None:
            first_event = time.perf_counter()  # after the scan and the target pyramid
        if isinstance(event, ScaleStarted):
            level_started = time.perf_counter()
        elif isinstance(event, TileFinished):
            tiles += 1
        elif isinstance(event, ScaleFinished):
            levels[event.level] = {
                "seconds": round(time.perf_counter() - level_started, 2),
                "psnr": round(event.psnr, 2),
                "mlps": int(event.active_mask.sum()),
                "blocks": int(event.active_mask.size),
            }
            spent = io_seconds.get(event.level, {"read": 0.0, "write": 0.0})
            seconds = max(levels[event.level]["seconds"], 1e-9)
            levels[event.level]["read_share"] = round(spent["read"] / seconds, 3)
            levels[event.level]["write_share"] = round(spent["write"] / seconds, 3)
    total_s = time.perf_counter() - started
    model = run.model
    tile_blocks = list(ModelStore.open(store).header.fit["work_tiles"][0])
    result = {
        "size": size,
        "pixels": size * size,
        "device": str(args.device),
        "threads": args.threads,
        "memory_budget": args.memory_budget,
        "max_steps": args.steps,
        "tile_blocks_level0": tile_blocks,
        "scan_s": round(scan_s, 2),
        "scan_mpix_per_s": round(size * size / scan_s / 1e6, 1),
        "prepare_s": round((first_event or started) - started - scan_s, 2),
        "levels": levels,
        "tiles": tiles,
        "total_s": round(total_s, 1),
        "psnr": levels.get(0, {}).get("psnr"),
        "parameters": model.n_parameters,
        "store_mb": round(folder_size(store) / 1e6, 1),
        "input_mb": round(size * size / 1e6, 1),
        "rss_before_fit_mb": round(rss_before),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    if torch.cuda.is_available() and str(args.device).startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 1e6)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)  # one size, in-process
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--check-every", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-budget", default="512MB")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", default="/tmp/napari-miner-gigapixel")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the generated images and fits")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="MinerConfig overrides (JSON values), e.g. weight_bits=null max_splits=0",
    )  # fmt: skip
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.size is not None:
        print(json.dumps(fit_one(args)), flush=True)
        return

    results = []
    for size in args.sizes:
        image_path = Path(args.work) / f"image-{size}.zarr"
        if not (image_path / "zarr.json").exists():  # generated here, not in the measured process
            print(f"{size}²: generated in {write_image(image_path, size):.1f} s", flush=True)
        command = [sys.executable, __file__, "--size", str(size)]
        for flag in ("steps", "check_every", "device", "memory_budget", "threads", "work"):
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        if args.set:
            command += ["--set", *args.set]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{size}²: peak RSS {result['peak_rss_mb']} MB (before fitting "
            f"{result['rss_before_fit_mb']} MB) | scan {result['scan_mpix_per_s']} MP/s | "
            f"targets {result['prepare_s']} s | levels "
            + ", ".join(
                f"{j}: {v['seconds']} s {v['psnr']} dB (I/O: read {v['read_share']:.0%}, "
                f"write {v['write_share']:.0%})"
                for j, v in sorted(result["levels"].items(), reverse=True)
            )
            + f" | total {result['total_s']} s | {result['parameters']:,} parameters | store "
            f"{result['store_mb']} MB (input {result['input_mb']} MB)",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(Path(args.work) / f"fit-{size}.miner.zarr", ignore_errors=True)
    peaks = [r["peak_rss_mb"] for r in results]
    if len(peaks) > 1:
        print(f"peak RSS spread: {max(peaks) / min(peaks) - 1:.1%} (max {max(peaks)} MB)")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
