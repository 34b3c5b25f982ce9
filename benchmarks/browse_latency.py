"""Browsing latency of a fitted model in a real napari viewer: main-thread blocking and tile arrival.

Builds a 16384×16384 RGB model (the astronaut fitted with ``max_steps=40`` and its banks tiled
32×32: a model whose blocks are mostly active, see ``decode_throughput.py --tile``), or loads a
saved one, opens it as the napari reader does (a progressive multiscale layer whose tiles are
decoded off the main thread) in a real viewer (run under Xvfb: ``xvfb-run -a python
benchmarks/browse_latency.py``), and then, several times: zooms out to the whole image, zooms in to
full resolution at some point, and pans by half a screen three times. Per interaction it reports
the level napari shows, the longest time the main thread was blocked (the largest gap between the
ticks of a 2 ms Qt timer, the interaction itself included) and the time until the final tiles are
on screen (the view's tiles all decoded and the layer redrawn with them).

Usage::

    xvfb-run -a python benchmarks/browse_latency.py [--model m.miner.zarr] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _common import load_image  # noqa: E402
from decode_throughput import tiled  # noqa: E402

import napari_miner as nm  # noqa: E402


class Heartbeat:
    """Ticks of a 2 ms Qt timer on the main thread: gaps between them are main-thread blocks."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(2)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()

    def longest_gap(self, start: float, end: float) -> float:
        """Longest interval without a tick between ``start`` and ``end`` (both ends included)."""
        inside = [start] + [t for t in self.ticks if start < t < end] + [end]
        return max(b - a for a, b in zip(inside, inside[1:], strict=False))


def settle(app, pyramid, refresher, timeout: float = 60.0) -> float:
    """Run the event loop until the view's tiles are decoded and drawn; the time that happened."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        app.processEvents()
        if pyramid.last_complete and pyramid.pending() == 0 and not refresher.queued:
            return time.perf_counter()
        time.sleep(0.001)
    raise SystemExit("the view never completed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved *.miner.zarr instead of the tiled astronaut")
    parser.add_argument("--tile", type=int, default=32, help="tiles of the astronaut model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="1280x900", help="viewer window size")
    args = parser.parse_args()

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    if args.model:
        model = nm.load(args.model)
    else:
        small = nm.fit(load_image("astronaut"), nm.MinerConfig(max_steps=40), device="cpu")
        model = tiled(small, args.tile)
    print(f"model: {model}")

    import napari

    from napari_miner._napari.reader import REFRESHER_KEY, model_layer_data

    viewer = napari.Viewer(show=True)
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(width, height)
    app = napari.qt.get_qapp()
    heartbeat = Heartbeat()
    opened = time.perf_counter()
    (_, _, _), (data, kwargs, _) = model_layer_data(model, "browse")
    layer = viewer.add_image(data, **kwargs)
    refresher = kwargs["metadata"][REFRESHER_KEY]
    refresher.add_layer(layer)
    pyramid = refresher.pyramid
    shown = settle(app, pyramid, refresher)
    open_row = (
        "open (whole image)",
        layer.data_level,
        heartbeat.longest_gap(opened, shown),
        shown - opened,
    )

    h, w = model.level_shape(0)
    canvas = viewer.window._qt_viewer.canvas.size
    rng = np.random.default_rng(0)
    rows: list[tuple[str, int, float, float]] = [open_row]

    def interact(what: str, action) -> None:
        start = time.perf_counter()
        action()
        done = settle(app, pyramid, refresher)
        rows.append((what, layer.data_level, heartbeat.longest_gap(start, done), done - start))

    for _ in range(args.rounds):
        interact("zoom out (whole image)", viewer.reset_view)
        y, x = (float(v) for v in rng.uniform(0.2, 0.8, 2) * (h, w))

        def zoom_in(y: float = y, x: float = x) -> None:
            viewer.scene.camera.center = (y, x)
            viewer.scene.camera.zoom = 1.0

        interact("zoom in to level 0", zoom_in)
        for _ in range(3):

            def pan() -> None:
                cy, cx = viewer.scene.camera.center[-2:]
                viewer.scene.camera.center = (cy, cx + canvas[0] / 2 / viewer.scene.camera.zoom)

            interact("pan by half a screen", pan)

    print(
        f"canvas {canvas[0]}x{canvas[1]} px, tiles {pyramid.chunk[-1]} px, refreshes {refresher.refreshes}"
    )
    print()
    print(f"{'interaction':<26} {'level':>5} {'blocked ms':>11} {'final tiles ms':>15}")
    for what, level, blocked, final in rows:
        print(f"{what:<26} {level:>5} {blocked * 1e3:>11.1f} {final * 1e3:>15.1f}")
    print()
    for kind in dict.fromkeys(r[0] for r in rows):
        chosen = [r for r in rows if r[0] == kind]
        print(
            f"{kind:<26} max blocked {max(r[2] for r in chosen) * 1e3:6.1f} ms, "
            f"final tiles median {statistics.median(r[3] for r in chosen) * 1e3:7.1f} ms, "
            f"max {max(r[3] for r in chosen) * 1e3:7.1f} ms"
        )
    print(f"# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    pyramid.close()
    viewer.close()


if __name__ == "__main__":
    main()
