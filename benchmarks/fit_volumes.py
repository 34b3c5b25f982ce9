"""Occupancy-volume benchmark: time to IoU 0.95 / 0.99 / 0.999, parameters and sizes on disk.

The shape is procedural and deterministic (a union of spheres and a torus in an ``N``³ volume).
IoU is measured at full resolution: at the end of every coarse level from a full decode, and during
level 0 from the trainer's exact per-block counts (level 0's IoU *is* the full-resolution IoU).
Time excludes those evaluations. Sizes: the ``.miner.zarr`` store against the raw voxels (one byte
each, and bit-packed) and against a binary PLY of the decoded surface.

Usage::

    python benchmarks/fit_volumes.py [--size 256] [--device cpu|cuda|auto] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import config_overrides, folder_size

import napari_miner as nm
from napari_miner.core.metrics import iou
from napari_miner.io.mesh import export_mesh

THRESHOLDS = (0.95, 0.99, 0.999)


def occupancy_shape(n: int) -> np.ndarray:
    """Union of 7 spheres and a torus, ``n``³ booleans, built slice by slice."""
    rng = np.random.default_rng(42)
    spheres = [(rng.random(3) * 0.5 + 0.25, rng.random() * 0.1 + 0.06) for _ in range(7)]
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / n
    volume = np.zeros((n, n, n), bool)
    for k in range(n):
        z = (k + 0.5) / n
        plane = np.zeros((n, n), bool)
        for centre, radius in spheres:
            plane |= (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < radius**2
        ring = np.hypot(y - 0.5, x - 0.5) - 0.3
        plane |= ring**2 + (z - 0.5) ** 2 < 0.06**2
        volume[k] = plane
    return volume


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    overrides = config_overrides(args.set)
    config = nm.MinerConfig.for_volume(target_iou=THRESHOLDS[-1], **overrides)
    device = str(nm.resolve_device(args.device))
    volume = occupancy_shape(args.size)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"volume: {volume.shape}, {volume.mean():.1%} occupied; config: {config}")

    reached: dict[float, float | None] = dict.fromkeys(THRESHOLDS)

    def record(value: float, elapsed: float) -> None:
        for threshold in THRESHOLDS:
            if reached[threshold] is None and value >= threshold:
                reached[threshold] = elapsed

    run = nm.fit_iter(volume, config, device=device)
    final = None
    for event in run:
        if isinstance(event, nm.ScaleFinished):
            value = iou(volume, run.model.decode(0, device=device))
            print(
                f"level {event.level}: {event.steps} steps, IoU {value:.4f}, {event.elapsed_s:.1f} s"
            )
            record(value, event.elapsed_s)
        elif isinstance(event, nm.Progress) and event.level == 0 and event.iou is not None:
            record(event.iou, event.elapsed_s)
        elif isinstance(event, nm.Finished):
            final = event
    assert final is not None
    model = final.model
    final_iou = iou(volume, model.decode(0, device=device))
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "shape.miner.zarr"
        model.save(store)
        store_bytes = folder_size(store)
        ply = Path(folder) / "shape.ply"
        export_mesh(model, ply)
        ply_bytes = ply.stat().st_size
    result = {
        "size": args.size,
        "device": name,
        "time_to_iou_s": {str(k): v for k, v in reached.items()},
        "final_iou": final_iou,
        "train_time_s": final.elapsed_s,
        "parameters": model.n_parameters,
        "store_bytes": store_bytes,
        "raw_bytes": volume.size,
        "raw_bitpacked_bytes": volume.size // 8,
        "ply_bytes": ply_bytes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "levels": [
            {k: lv.stats.get(k) for k in ("n_blocks", "n_mlps", "steps", "iou")}
            for lv in model.levels
        ],
    }
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    times = "  ".join(
        f"IoU {k}: {'never' if v is None else f'{v:.1f} s'}" for k, v in reached.items()
    )
    print(
        f"{times} | final IoU {final_iou:.4f} in {final.elapsed_s:.1f} s | {model.n_parameters:,} parameters"
    )
    print(
        f"store {store_bytes / 1e6:.2f} MB vs raw {volume.size / 1e6:.1f} MB "
        f"({volume.size / store_bytes:.0f}x; bit-packed {volume.size / 8 / store_bytes:.1f}x) "
        f"vs PLY {ply_bytes / 1e6:.2f} MB ({ply_bytes / store_bytes:.1f}x) | peak RSS {result['peak_rss_mb']:.0f} MB"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
