"""``python -m napari_miner``: the napari-miner demo.

Examples
--------
python -m napari_miner --fit                            # napari + the MINER widget, fitting the astronaut
python -m napari_miner --image retina                   # the widget docked; press Fit
python -m napari_miner --image camera --screenshot m.png  # fit, show every level side by side, save, exit

With a display, napari opens with the sample image and the "MINER fit" widget docked (``--fit``
starts fitting at once: watch the levels train and the active blocks shrink). With
``--screenshot``, the image is fitted first and napari shows the input and every level side by side
in grid mode, saves the canvas and exits. On Linux without a display (no ``DISPLAY``/
``WAYLAND_DISPLAY``) the command re-runs itself under ``xvfb-run`` when that is installed, in the
screenshot mode (nobody could see a window).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGES = ("astronaut", "retina", "camera")
HEADLESS_SCREENSHOT = "napari-miner-screenshot.png"
_REEXEC_FLAG = "NAPARI_MINER_UNDER_XVFB"


def load_image(name: str) -> np.ndarray:
    """Return the named demo image (see ``IMAGES``)."""
    from napari_miner._napari import sample_data

    if name == "astronaut":
        return sample_data.astronaut_image()
    if name == "retina":
        return sample_data.retina_image()
    if name == "camera":
        from skimage import data

        return data.camera()
    raise ValueError(f"unknown image {name!r}; choose one of {', '.join(IMAGES)}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m napari_miner",
        description="Fit a sample image with MINER and show every pyramid level in napari.",
    )
    parser.add_argument("--image", choices=IMAGES, default="astronaut", help="demo image")
    parser.add_argument(
        "--max-steps", type=int, default=None, metavar="N", help="training steps per level cap"
    )
    parser.add_argument("--device", default="auto", help="'auto' (default), 'cpu', 'cuda', ...")
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        metavar="PATH",
        help="save a PNG of the canvas after adding the layers and exit (no event loop)",
    )
    parser.add_argument(
        "--fit",
        action="store_true",
        help="start fitting in the MINER widget as soon as napari opens",
    )
    args = parser.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be at least 1")
    return args


def needs_virtual_display() -> bool:
    """Whether Qt has no display to draw on (Linux without X11/Wayland), so Xvfb is needed."""
    return (
        sys.platform.startswith("linux")
        and not os.environ.get("DISPLAY")
        and not os.environ.get("WAYLAND_DISPLAY")
        and os.environ.get("QT_QPA_PLATFORM", "") in ("", "xcb")
    )


def _reexec_under_xvfb(argv: list[str], screenshot: Path | None) -> None:
    """Replace this process with itself under ``xvfb-run`` (never returns on success)."""
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run is None or os.environ.get(_REEXEC_FLAG):
        return
    if screenshot is None:
        argv = [*argv, "--screenshot", HEADLESS_SCREENSHOT]
        print(
            f"No display found: running under Xvfb and saving the canvas to "
            f"{HEADLESS_SCREENSHOT} instead of opening a window.",
            flush=True,
        )
    os.environ[_REEXEC_FLAG] = "1"
    cmd = [xvfb_run, "-a", "-s", "-screen 0 1280x1024x24", sys.executable, "-m", "napari_miner"]
    os.execv(xvfb_run, [*cmd, *argv])


def open_widget(args: argparse.Namespace) -> int:
    """Open napari with the demo image and the "MINER fit" widget docked (fitting with ``--fit``)."""
    import napari

    from napari_miner._napari.widget import MinerWidget

    image = load_image(args.image)
    viewer = napari.Viewer(title=f"napari-miner: {args.image}")
    viewer.add_image(image, name=args.image)
    widget = MinerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MINER fit", area="right")
    if args.max_steps is not None:
        widget.settings.set_values(max_steps=args.max_steps)
    device = "cuda" if args.device.startswith("cuda") else args.device
    widget.inputs.device_combo.setCurrentText(device)
    if args.fit:
        widget.start()
    napari.run()
    return 0


def fit_with_progress(image: np.ndarray, config: Any, device: str, interval_s: float = 1.0) -> Any:
    """Fit ``image`` with :func:`napari_miner.fit_iter`, printing its progress; return the model.

    Prints the run's progress line (:meth:`~napari_miner.fitting.progress.FitProgress.describe`) at
    most once per ``interval_s``, and whenever a level finishes and when the fit ends.
    """
    from napari_miner import fit_iter

    run = fit_iter(image, config, device=device)
    progress = run.progress
    last_print, levels_done = -float("inf"), 0
    for _ in run:
        now = time.monotonic()
        if progress.finished:
            print(progress.describe(), flush=True)
        elif progress.finished_levels > levels_done:
            levels_done = progress.finished_levels
            print(f"level {progress.level} done · {progress.describe()}", flush=True)
        elif now - last_print >= interval_s:
            last_print = now
            print(f"  {progress.describe()}", flush=True)
    return run.model


def _settle(viewer: Any) -> None:
    """Let Qt lay out the window so that ``reset_view`` sees the final canvas size."""
    from qtpy.QtWidgets import QApplication

    viewer.window._qt_window.resize(1400, 900)
    for _ in range(3):
        QApplication.processEvents()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if needs_virtual_display():
        _reexec_under_xvfb(argv, args.screenshot)  # returns only if xvfb-run is unavailable
    if args.screenshot is None:  # interactive: fit in the widget, watch the levels train
        return open_widget(args)

    from napari_miner import MinerConfig

    image = load_image(args.image)
    config = MinerConfig()
    if args.max_steps is not None:
        config = dataclasses.replace(config, max_steps=args.max_steps)
    print(f"Fitting {args.image} {image.shape} {image.dtype} with {config}", flush=True)
    t0 = time.perf_counter()
    model = fit_with_progress(image, config, args.device)
    print(f"Fitted {model!r} in {time.perf_counter() - t0:.1f} s", flush=True)

    import napari

    from napari_miner._napari.levels import add_level_layers

    viewer = napari.Viewer(title=f"napari-miner: {args.image}")
    viewer.add_image(image, name=args.image, rgb=bool(model.is_rgb))
    add_level_layers(viewer, model, args.image)
    viewer.canvas.grid.enabled = True  # input and every level side by side
    _settle(viewer)
    viewer.reset_view()

    if args.screenshot is not None:
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(path=str(args.screenshot), canvas_only=True)
        print(f"Saved screenshot to {args.screenshot}", flush=True)
        viewer.close()
        return 0
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
