"""Size on disk of a saved MINER model versus the raw image and a zarr multiscale pyramid.

For scikit-image's ``astronaut`` (512×512 RGB) and the top-left 1280×1280 crop of ``retina`` (RGB),
fit with the default :class:`~napari_miner.MinerConfig`, save the model and print, as a markdown
table: the ``*.miner.zarr`` size (sum of its file sizes), the raw uint8 input size, the compression
ratio raw/model, the size of the same image written as a zarr multiscale pyramid with zarr's default
settings (levels by 2× area downsampling until the smallest side is at most 512, as in a typical
OME-Zarr pyramid) and its ratio to the model, and the model's PSNR (peak 255) at full resolution.

Usage::

    python benchmarks/store_size.py [--device cpu|cuda|auto] [--images astronaut retina]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from _common import folder_size, load_image

import napari_miner as nm
from napari_miner.core.metrics import psnr


def area_downsample(image: np.ndarray) -> np.ndarray:
    """2× mean over the two spatial axes of a ``(Y, X[, C])`` uint8 image (odd sides edge-padded)."""
    pad = [(0, image.shape[0] % 2), (0, image.shape[1] % 2)] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image.astype(np.float64), pad, mode="edge")
    y, x = padded.shape[0] // 2, padded.shape[1] // 2
    mean = padded.reshape(y, 2, x, 2, *padded.shape[2:]).mean(axis=(1, 3))
    return np.rint(mean).astype(image.dtype)


def write_pyramid(image: np.ndarray, path: Path, max_side: int = 512) -> int:
    """Write a zarr multiscale pyramid with zarr's defaults; return the number of levels."""
    group = zarr.open_group(str(path), mode="w")
    level, levels = image, 0
    while True:
        group.create_array(str(levels), data=level)
        levels += 1
        if min(level.shape[:2]) <= max_side:
            return levels
        level = area_downsample(level)


def measure(name: str, config: nm.MinerConfig, device: str, workdir: Path) -> dict:
    """Fit, save and measure one image."""
    image = load_image(name)
    start = time.perf_counter()
    model = nm.fit(image, config, device=device)
    fit_s = time.perf_counter() - start
    model_path = workdir / f"{name}.miner.zarr"
    model.save(model_path)
    pyramid_path = workdir / f"{name}.pyramid.zarr"
    n_pyramid_levels = write_pyramid(image, pyramid_path)
    level0_path = workdir / f"{name}.level0.zarr"
    write_pyramid(image, level0_path, max_side=math.inf)
    return {
        "image": name,
        "shape": image.shape,
        "model_bytes": folder_size(model_path),
        "parameter_bytes": model.n_parameters * 4,
        "raw_bytes": image.nbytes,
        "pyramid_bytes": folder_size(pyramid_path),
        "pyramid_levels": n_pyramid_levels,
        "level0_bytes": folder_size(level0_path),
        "psnr_db": psnr(image, model.decode(0), data_range=255),
        "parameters": model.n_parameters,
        "fit_s": fit_s,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", nargs="+", default=["astronaut", "retina"])
    args = parser.parse_args(argv)
    config = nm.MinerConfig()
    device = str(nm.resolve_device(args.device))
    print(f"zarr {zarr.__version__}, device {device}, {config}\n")
    print(
        "| image | model (.miner.zarr) | raw uint8 | raw / model | zarr pyramid (levels) "
        "| pyramid / model | zarr level 0 only | PSNR | parameters (float32 bytes) | fit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.images:
            r = measure(name, config, device, Path(tmp))
            shape = "×".join(map(str, r["shape"]))
            print(
                f"| {name} {shape} | {r['model_bytes'] / 1e3:,.1f} kB | {r['raw_bytes'] / 1e3:,.1f} kB "
                f"| {r['raw_bytes'] / r['model_bytes']:.2f}× "
                f"| {r['pyramid_bytes'] / 1e3:,.1f} kB ({r['pyramid_levels']}) "
                f"| {r['pyramid_bytes'] / r['model_bytes']:.2f}× "
                f"| {r['level0_bytes'] / 1e3:,.1f} kB | {r['psnr_db']:.2f} dB "
                f"| {r['parameters']:,} ({r['parameter_bytes'] / 1e3:,.1f} kB) | {r['fit_s']:.1f} s |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
