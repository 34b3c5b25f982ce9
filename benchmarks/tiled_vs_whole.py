"""A tiled (out-of-core) fit against the in-memory fit of the same image with the same settings.

Fits a generated slide-like image (see ``fit_gigapixel.py``) or a scikit-image picture in memory
and out of core with a small memory budget (so that the fine levels are cut into tiles), and prints
the PSNR, parameters and time of both, for the default settings and for a run with a fixed number of
steps (target never reached, no plateau stop: the two fits then differ only by the tiling).

    python benchmarks/tiled_vs_whole.py --size 4096 --device cuda
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from fit_gigapixel import generate_chunk

import napari_miner as nm
from napari_miner.core.metrics import psnr
from napari_miner.io.store import ModelStore


def run(image: np.ndarray, config: nm.MinerConfig, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    whole = nm.fit(image, config, device=args.device)
    whole_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as work:
        store = Path(work) / "tiled.miner.zarr"
        started = time.perf_counter()
        tiled = nm.fit(
            image, config, device=args.device, store=store, memory_budget=args.memory_budget
        )
        tiled_s = time.perf_counter() - started
        tiles = [list(t) for t in ModelStore.open(store).header.fit["work_tiles"]]
        whole_db, tiled_db = psnr(image, whole.decode(), 255), psnr(image, tiled.decode(), 255)
        result = {
            "whole": {
                "psnr": round(whole_db, 3),
                "parameters": whole.n_parameters,
                "seconds": round(whole_s, 1),
            },
            "tiled": {
                "psnr": round(tiled_db, 3),
                "parameters": tiled.n_parameters,
                "seconds": round(tiled_s, 1),
            },
            "tile_blocks": tiles,
            "difference_db": round(tiled_db - whole_db, 3),
        }
        shutil.rmtree(store, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-budget", default="256MB")
    parser.add_argument(
        "--configs", nargs="+", default=["default", "fixed"], choices=["default", "fixed"]
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    image = generate_chunk(0, 0, (args.size, args.size), args.size)
    configs = {
        "default": nm.MinerConfig(),
        "fixed": nm.MinerConfig(
            max_steps=100,
            target_psnr=80.0,
            plateau_rel_tol=0.0,
            final_plateau_rel_tol=0.0,
            weight_bits=None,
        ),
    }
    results = {}
    for name in args.configs:
        config = configs[name]
        results[name] = result = run(image, config, args)
        w, t = result["whole"], result["tiled"]
        print(
            f"{args.size}² {name} on {args.device}: in memory {w['psnr']:.2f} dB, "
            f"{w['parameters']:,} parameters, {w['seconds']} s | tiled {t['psnr']:.2f} dB, "
            f"{t['parameters']:,} parameters, {t['seconds']} s | difference "
            f"{result['difference_db']:+.3f} dB | level-0 tiles {result['tile_blocks'][0]} blocks",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
