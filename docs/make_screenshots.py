"""Regenerate the screenshots of the "MINER fit" dock widget used by the docs.

Usage::

    python docs/make_screenshots.py                 # default settings, about 10-30 s on a CPU
    python docs/make_screenshots.py --max-steps 200 --out docs/images

Opens napari (under Xvfb when there is no display: the script re-runs itself with ``xvfb-run``),
loads the astronaut sample, docks the widget, fits with the widget's default settings and saves

* ``widget-training.png``: the whole window mid-fit (live level layers, active-blocks overlay,
  progress line and PSNR plot in the dock);
* ``widget-done.png``: the whole window once the fit finished (the lazy multiscale result).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    """Fit the astronaut in the widget and save the two screenshots; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per level cap")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for the fit")
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
    viewer.open_sample("napari-miner", "astronaut")
    widget = MinerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MINER fit", area="right")
    if args.max_steps is not None:
        widget.steps_spin.setValue(args.max_steps)
    widget.device_combo.setCurrentText(args.device)
    window = widget.window()
    window.resize(1500, 950)
    for _ in range(5):
        QApplication.processEvents()
    viewer.reset_view()
    _activity_dock(viewer, True)  # napari's progress bar

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if not widget.start():
        return 1

    def mid_fit() -> bool:
        s = widget.last_status
        return not widget.running or (s is not None and s.level == 0 and s.step >= 30)

    _process_until(mid_fit, args.timeout)
    if not widget.running:
        print("warning: the fit ended before the mid-fit screenshot", flush=True)
    _process_until(lambda: False, 0.3)  # let the latest layer refresh draw
    training = args.out / "widget-training.png"
    viewer.screenshot(path=str(training), canvas_only=False, flash=False)
    print(f"{time.monotonic() - t0:5.1f} s  saved {training}: {widget.status_label.text()}")

    if not _process_until(lambda: not widget.running, args.timeout):
        print("error: the fit did not finish in time", flush=True)
        widget.stop()
        _process_until(lambda: not widget.running, 60)
    _activity_dock(viewer, False)
    overlay = widget.live.overlay if widget.live is not None else None
    if overlay is not None:
        overlay.visible = False  # the result itself; the overlay is in the mid-fit picture
    _process_until(lambda: False, 0.5)
    done = args.out / "widget-done.png"
    viewer.screenshot(path=str(done), canvas_only=False, flash=False)
    print(f"{time.monotonic() - t0:5.1f} s  saved {done}: {widget.status_label.text()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
