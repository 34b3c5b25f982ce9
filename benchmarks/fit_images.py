"""Time-to-PSNR benchmark of MINER image fitting (the numbers in docs/benchmarks.md).

For scikit-image's ``astronaut`` (512×512 RGB) and the top-left 1280×1280 crop of ``retina`` (RGB),
fit with the given configuration and print the training time to 30/35/38/40 dB, the final PSNR and
why the fit ended, the parameter count, the saved store's size (bits per pixel) and peak memory. PSNR is always that of the full-resolution reconstruction (a coarser
level's estimate upsampled to full size), computed against the uint8 input with peak 255; the time
excludes only that evaluation, as the reference code does.

Usage::

    python benchmarks/fit_images.py [--device cpu|cuda|auto] [--images astronaut retina]
        [--eval-every 25] [--set key=value ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import config_overrides, folder_size, load_image

import napari_miner as nm
from napari_miner.core.metrics import psnr

THRESHOLDS = (30.0, 35.0, 38.0, 40.0)


def run_one(name: str, config: nm.MinerConfig, device: str, eval_every: int) -> dict:
    """Fit one image and return its measurements."""
    image = load_image(name)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reached: dict[float, float | None] = dict.fromkeys(THRESHOLDS)
    curve: list[tuple[float, float, int]] = []
    wall = time.perf_counter()
    run = nm.fit_iter(image, config, device=device)
    final = None
    for event in run:
        if (
            isinstance(event, nm.Progress)
            and event.step % eval_every == 0
            or isinstance(event, nm.ScaleFinished)
        ):
            value = psnr(image, run.model.decode(0, device=device), data_range=255)
            curve.append((event.elapsed_s, value, event.level))
            for threshold in THRESHOLDS:
                if reached[threshold] is None and value >= threshold:
                    reached[threshold] = event.elapsed_s
        elif isinstance(event, nm.Finished):
            final = event
    assert final is not None
    value = psnr(image, final.model.decode(0, device=device), data_range=255)
    for threshold in THRESHOLDS:
        if reached[threshold] is None and value >= threshold:
            reached[threshold] = final.elapsed_s
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / f"{name}.miner.zarr"
        final.model.save(store)
        store_bytes = folder_size(store)
    result = {
        "image": name,
        "shape": list(image.shape),
        "time_to_psnr_s": {str(k): v for k, v in reached.items()},
        "final_psnr_db": value,
        "train_time_s": final.elapsed_s,
        "wall_time_s": time.perf_counter() - wall,
        "reason": final.reason,
        "parameters": final.model.n_parameters,
        "store_bytes": store_bytes,
        "store_bpp": 8 * store_bytes / (image.shape[0] * image.shape[1]),
        "levels": [
            {"level": j, **{k: lv.stats.get(k) for k in ("n_blocks", "n_mlps", "steps", "psnr")}}
            for j, lv in enumerate(final.model.levels)
        ],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before,
        "curve": curve,
    }
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", nargs="+", default=["astronaut", "retina"])
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    overrides = config_overrides(args.set)
    config = nm.MinerConfig(progress_every=args.eval_every, **overrides)
    device = str(nm.resolve_device(args.device))
    machine = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
    }
    print(f"machine: {machine}")
    print(f"config: {config}")
    results = []
    for name in args.images:
        result = run_one(name, config, device, args.eval_every)
        results.append(result)
        times = "  ".join(
            f"{k} dB: {'never' if v is None else f'{v:.2f} s'}"
            for k, v in result["time_to_psnr_s"].items()
        )
        print(
            f"{name} {tuple(result['shape'])}: {times} | final {result['final_psnr_db']:.2f} dB "
            f"in {result['train_time_s']:.2f} s ({result['reason']}) | "
            f"{result['parameters']:,} parameters | store {result['store_bpp']:.2f} bpp | "
            f"peak RSS {result['peak_rss_mb']:.0f} MB"
            + (f" | peak GPU {result['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in result else "")
        )
        for level in result["levels"]:
            print(f"    level {level}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"machine": machine, "config": config.to_dict(), "results": results},
                handle,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
