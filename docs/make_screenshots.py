"""Regenerate the screenshots of the "MINER fit" dock widget used by the docs.

Usage::

    python docs/make_screenshots.py                 # default settings, about 10-30 s on a CPU
    python docs/make_screenshots.py --max-steps 200 --out docs/images
    python docs/make_screenshots.py --volume        # the 3D screenshot, about 1-2 min on a CPU

Opens napari (under Xvfb when there is no display: the script re-runs itself with ``xvfb-run``),
loads the astronaut sample, docks the widget, fits with the widget's default settings and saves

* ``widget-training.png``: the whole window mid-fit (live level layers, active-blocks overlay,
  progress line and PSNR plot in the dock);
* ``widget-done.png``: the whole window once the fit finished (the lazy multiscale result).

With ``--zarr`` it fits a generated 4096² slide-like image from a zarr path, out of core:

* ``widget-zarr.png``: the whole window while level 0 trains tile by tile (lazy level layers).

With ``--debug`` it pauses the fit of the astronaut during level 0 and saves the debugging views:

* ``debug_error_layer.png``: the error map (per pixel, on its fixed 0–5 % range) of level 0 as
  trained so far, with the per-level PSNR table and the colour bar in the dock;
* ``debug_block_states.png``: the block states of level 0 (pruned, waiting, training, retired),
  the legend, and the block under the cursor described in the dock;
* ``debug_block_states_done.png``: the same once the fit finished (level 0's blocks pruned,
  retired, trained or grown) with every level's final PSNR.

With ``--volume`` it fits a 64³ occupancy volume (spheres and a torus) instead, with the widget's
volume defaults, adds its mesh and saves

* ``widget-3d.png``: the whole window in 3D: the mesh (Surface layer) of the fitted volume, the
  progress line with the final IoU, the layer list with the iso-rendered levels and the 3D overlay.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from napari_miner.__main__ import needs_virtual_display

_REEXEC_FLAG = "NAPARI_MINER_SCREENSHOTS_UNDER_XVFB"
ROOT = Path(__file__).resolve().parent.parent


def _reexec_under_xvfb() -> None:
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run is None or os.environ.get(_REEXEC_FLAG):
        sys.exit("no display and no xvfb-run: install Xvfb (apt-get install xvfb)")
    os.environ[_REEXEC_FLAG] = "1"
    cmd = [xvfb_run, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv]
    os.execv(xvfb_run, cmd)


def _process_until(condition, timeout_s: float) -> bool:
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        QApplication.processEvents()
        if condition():
            return True
        time.sleep(0.02)
    return False


def _activity_dock(viewer, visible: bool) -> None:
    try:  # private napari API, acceptable in a docs script
        viewer.window._status_bar._toggle_activity_dock(visible)
    except AttributeError:
        pass


def occupancy_volume(n: int = 64, seed: int = 3) -> np.ndarray:
    """A union of random spheres and a tilted torus in an ``n``³ boolean volume."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.mgrid[0:n, 0:n, 0:n] + 0.5) / n
    ring = np.hypot(y - 0.5, (x - 0.5) * 0.9 + (z - 0.5) * 0.3) - 0.28
    occupied = ring**2 + ((z - 0.5) * 0.9 - (x - 0.5) * 0.3) ** 2 < 0.09**2
    for _ in range(4):
        c = rng.random(3) * 0.5 + 0.25
        r = rng.random() * 0.07 + 0.07
        occupied |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r**2
    return occupied


def volume_screenshot(viewer, widget, args: argparse.Namespace) -> int:
    """Fit an occupancy volume in 3D, add its mesh and save ``widget-3d.png``; the exit status."""
    viewer.add_image(occupancy_volume(), name="shapes")
    widget.inputs.input_combo.setCurrentText("shapes")  # the form switches to the volume defaults
    widget.settings.set_values(n_levels=3)
    if args.max_steps is not None:
        widget.settings.set_values(max_steps=args.max_steps)
    t0 = time.monotonic()
    if not widget.start():
        return 1
    if not _process_until(lambda: not widget.running, args.timeout):
        print("error: the fit did not finish in time", flush=True)
        widget.stop()
        _process_until(lambda: not widget.running, 60)
    print(f"{time.monotonic() - t0:5.1f} s  fitted: {widget.status_label.text()}", flush=True)
    results = widget.results
    if not results.add_mesh() or not _process_until(lambda: not results.mesh_busy, 120):
        print("error: no mesh", flush=True)
        return 1
    _activity_dock(viewer, False)
    shown = {"shapes · MINER mesh"}
    for layer in viewer.layers:
        layer.visible = layer.name in shown
    mesh = viewer.layers["shapes · MINER mesh"]
    mesh.colormap = "bop orange"
    viewer.layers.selection.active = mesh
    viewer.reset_view()  # (resets the angles too)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.angles = (20.0, -40.0, 110.0)  # oblique: napari's default looks down the z axis
    _process_until(lambda: False, 0.5)
    _save(viewer, widget, args.out / "widget-3d.png", t0)
    viewer.close()
    return 0


def zarr_screenshot(viewer, widget, args: argparse.Namespace) -> int:
    """Fit a generated 4096² slide from a zarr path, out of core; save ``widget-zarr.png``."""
    import tempfile

    import zarr

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fit_gigapixel import generate_chunk

    work = Path(tempfile.mkdtemp(prefix="napari-miner-docs-"))
    size = 4096
    zarr.create_array(
        str(work / "slide.zarr"), data=generate_chunk(0, 0, (size, size), size), chunks=(512, 512)
    )
    widget.inputs.path_edit.setText(str(work / "slide.zarr"))
    widget.inputs.budget_edit.setText("64MB")  # small tiles, so that the picture shows several
    widget.settings.set_values(max_steps=args.max_steps or 30)
    t0 = time.monotonic()
    if not widget.start():
        return 1

    def tiles_done() -> bool:
        p = widget.progress
        return not widget.running or (
            p is not None and p.level == 0 and p.n_tiles > 1 and p.tiles_done >= p.n_tiles // 3
        )

    _process_until(tiles_done, args.timeout)
    viewer.reset_view()
    _process_until(lambda: False, 1.0)  # let the lazy layers decode what is on screen
    _save(viewer, widget, args.out / "widget-zarr.png", t0)
    widget.stop()
    _process_until(lambda: not widget.running, 60)
    viewer.close()
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


def debug_screenshots(viewer, widget, args: argparse.Namespace) -> int:
    """Pause the astronaut's fit in level 0; save the error map and block-state screenshots."""
    from napari_miner.core.block_state import BlockState

    t0 = time.monotonic()
    if not widget.start():
        return 1

    def some_retired() -> bool:  # level 0's main bank trains, some blocks retired
        view = widget.debug.view if widget.debug is not None else None
        if view is None or view.level != 0:
            return not widget.running
        counts = view.report.counts()
        return counts[BlockState.RETIRED] >= 5 and counts[BlockState.TRAINING] >= 20

    _process_until(some_retired, args.timeout)
    if not widget.running:
        print("error: the fit ended before the debugging screenshots", flush=True)
        return 1
    widget.pause()
    _process_until(lambda: False, 1.0)  # the frames on their way arrive
    _activity_dock(viewer, False)
    panel = widget.debug_panel
    panel.error_check.setChecked(True)
    _process_until(lambda: False, 0.5)
    _save(viewer, widget, args.out / "debug_error_layer.png", t0)
    panel.error_check.setChecked(False)
    panel.states_check.setChecked(True)
    report = widget.debug.view.report
    training = np.argwhere(report.state == BlockState.TRAINING)
    index = training[len(training) // 2]
    size = widget.live.block_transform(0)[0][0]
    viewer.cursor.position = tuple(size * (i + 0.5) for i in index)  # the block in the dock
    _process_until(lambda: False, 0.5)
    _save(viewer, widget, args.out / "debug_block_states.png", t0)
    widget.resume()
    if not _process_until(lambda: not widget.running, args.timeout):
        print("error: the fit did not finish in time", flush=True)
        return 1
    viewer.cursor.position = tuple(size * (i + 0.5) for i in index)
    _process_until(lambda: False, 0.5)
    _save(viewer, widget, args.out / "debug_block_states_done.png", t0)
    viewer.close()
    return 0


def browse_screenshots(viewer, args: argparse.Namespace) -> int:
    """Open a saved model, zoom in to level 0: the view while tiles decode, and once they have."""
    from napari_miner._napari.progressive_layer import REFRESHER_KEY

    layers = viewer.open(str(args.browse), plugin="napari-miner")
    image = layers[-1]
    refresher = image.metadata[REFRESHER_KEY]
    pyramid = refresher.pyramid

    def settled() -> bool:
        return pyramid.last_complete and not pyramid.pending() and not refresher.queued

    viewer.reset_view()
    _process_until(settled, 60)
    h, w = image.data[0].shape[:2]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.zoom = 2.0  # zoomed in at the centre: level 0
    camera.center = (h * 0.42, w * 0.55)
    _process_until(lambda: image.data_level == 0, 10)
    _process_until(lambda: False, 0.15)  # some tiles decoded, others still stand-ins
    path = args.out / "browse-loading.png"
    viewer.screenshot(path=str(path), canvas_only=True, flash=False)
    print(f"saved {path} (complete: {pyramid.last_complete})")
    _process_until(settled, 60)
    _process_until(lambda: False, 0.3)
    path = args.out / "browse-done.png"
    viewer.screenshot(path=str(path), canvas_only=True, flash=False)
    print(f"saved {path} (complete: {pyramid.last_complete})")
    return 0


def _save(viewer, widget, path: Path, t0: float) -> None:
    """Screenshot the whole window (dock included) and report it."""
    viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    print(f"{time.monotonic() - t0:5.1f} s  saved {path}: {widget.status_label.text()}")


def main(argv: list[str] | None = None) -> int:
    """Fit the astronaut (or, ``--volume``, a volume) in the widget and save the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per level cap")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for the fit")
    parser.add_argument("--volume", action="store_true", help="the 3D screenshot (widget-3d.png)")
    parser.add_argument(
        "--zarr", action="store_true", help="an out-of-core fit from a zarr path (widget-zarr.png)"
    )
    parser.add_argument(
        "--debug", action="store_true", help="the debugging views (debug_*.png), mid-fit"
    )
    parser.add_argument(
        "--browse", type=Path, help="a saved model: browsing it (browse-*.png), no fit"
    )
    args = parser.parse_args(argv)
    if needs_virtual_display():
        _reexec_under_xvfb()

    import napari
    from qtpy.QtWidgets import QApplication

    try:  # a toast about napari's PyQt5 support would cover part of the canvas
        import napari._qt.qt_main_window as qt_main_window

        qt_main_window.SHOW_QT_WARNING = False
    except (ImportError, AttributeError):
        pass

    from napari_miner._napari.widget import MinerWidget

    viewer = napari.Viewer(title="napari-miner: MINER fit")
    if args.browse is not None:
        viewer.window._qt_window.resize(1100, 800)
        args.out.mkdir(parents=True, exist_ok=True)
        return browse_screenshots(viewer, args)
    if not args.volume and not args.zarr:
        viewer.open_sample("napari-miner", "astronaut")
    widget = MinerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MINER fit", area="right")
    if args.max_steps is not None:
        widget.settings.set_values(max_steps=args.max_steps)
    widget.inputs.device_combo.setCurrentText(args.device)
    window = widget.window()
    window.resize(1500, 950)
    for _ in range(5):
        QApplication.processEvents()
    viewer.reset_view()
    _activity_dock(viewer, True)  # napari's progress bar

    args.out.mkdir(parents=True, exist_ok=True)
    if args.volume:
        return volume_screenshot(viewer, widget, args)
    if args.zarr:
        return zarr_screenshot(viewer, widget, args)
    if args.debug:
        return debug_screenshots(viewer, widget, args)
    t0 = time.monotonic()
    if not widget.start():
        return 1

    def mid_fit() -> bool:
        p = widget.progress
        return not widget.running or (p is not None and p.level == 0 and p.step >= 30)

    _process_until(mid_fit, args.timeout)
    if not widget.running:
        print("warning: the fit ended before the mid-fit screenshot", flush=True)
    _process_until(lambda: False, 0.3)  # let the latest layer refresh draw
    _save(viewer, widget, args.out / "widget-training.png", t0)

    if not _process_until(lambda: not widget.running, args.timeout):
        print("error: the fit did not finish in time", flush=True)
        widget.stop()
        _process_until(lambda: not widget.running, 60)
    _activity_dock(viewer, False)
    overlay = widget.live.overlay if widget.live is not None else None
    if overlay is not None:
        overlay.visible = False  # the result itself; the overlay is in the mid-fit picture
    _process_until(lambda: False, 0.5)
    _save(viewer, widget, args.out / "widget-done.png", t0)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
