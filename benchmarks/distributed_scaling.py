"""Scaling of a tiled fit over dask.distributed workers: 1 worker against N local workers.

Fits the same generated slide-like image (see ``fit_gigapixel.py``) out of core on a
``LocalCluster`` of 1 and of N worker processes (one thread each), checks that the models are the
same, and prints the wall time of each and the scaling efficiency ``t1 / (N * tN)``.

    python benchmarks/distributed_scaling.py --size 2048 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from fit_gigapixel import generate_chunk


def timed_fit(image: np.ndarray, workers: int, args: argparse.Namespace, work: Path) -> tuple:
    from distributed import Client, LocalCluster

    import napari_miner as nm

    config = nm.MinerConfig(max_steps=args.steps)
    store = work / f"fit-{workers}.miner.zarr"
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: None)  # workers are up before the clock starts
        started = time.perf_counter()
        model = nm.fit(
            image, config, device="cpu", store=store, memory_budget=args.memory_budget,
            tile_blocks=args.tile_blocks, client=client,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    return seconds, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tile-blocks", type=int, default=16)
    parser.add_argument("--memory-budget", default="512MB")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    image = generate_chunk(0, 0, (args.size, args.size), args.size)
    results = []
    reference = None
    with tempfile.TemporaryDirectory() as work:
        for workers in args.workers:
            seconds, model = timed_fit(image, workers, args, Path(work))
            decoded = model.decode()
            same = reference is None or bool(np.array_equal(decoded, reference))
            reference = decoded if reference is None else reference
            results.append({"workers": workers, "seconds": round(seconds, 1), "same_model": same})
    base = results[0]
    for result in results:
        speedup = base["seconds"] / result["seconds"]
        result["speedup"] = round(speedup, 2)
        result["efficiency"] = round(speedup * base["workers"] / result["workers"], 2)
        print(
            f"{args.size}², {args.steps} steps, tiles of {args.tile_blocks}² blocks: "
            f"{result['workers']} worker(s) {result['seconds']} s | speed-up "
            f"{result['speedup']} | efficiency {result['efficiency']} | same model as 1 worker: "
            f"{result['same_model']}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
