"""``python -m napari_miner``: argument parsing, demo images, and a real headless run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from skimage import data
from skimage.io import imread
from skimage.transform import resize

from napari_miner.__main__ import HEADLESS_SCREENSHOT, load_image, parse_args


def test_parse_args_defaults_and_options(tmp_path):
    args = parse_args([])
    assert (args.image, args.max_steps, args.device, args.screenshot) == (
        "astronaut",
        None,
        "auto",
        None,
    )
    args = parse_args(["--image", "retina", "--max-steps", "7", "--screenshot", "x.png"])
    assert (args.image, args.max_steps, str(args.screenshot)) == ("retina", 7, "x.png")


@pytest.mark.parametrize("argv", [["--max-steps", "0"], ["--image", "moon"]])
def test_parse_args_rejects_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "shape"),
    [("astronaut", (512, 512, 3)), ("retina", (1280, 1280, 3)), ("camera", (512, 512))],
)
def test_load_image(name, shape):
    image = load_image(name)
    assert image.shape == shape
    assert image.dtype == np.uint8


def _bands(profile: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in a 1D profile, as half-open (start, stop) pairs."""
    edges = np.diff(np.concatenate([[0], profile.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _panes(shot: np.ndarray) -> list[np.ndarray]:
    """The grid panes of a screenshot (non-black rectangles), row by row, as gray images."""
    gray = shot[..., :3].astype(float).mean(axis=-1)
    assert gray.max() > 0, "the screenshot is black"
    panes = []
    for r0, r1 in _bands(gray.max(axis=1) > 0):
        band = gray[r0:r1]
        panes += [band[:, c0:c1] for c0, c1 in _bands(band.max(axis=0) > 0)]
    return [p for p in panes if min(p.shape) > 20]


def _correlation_with_camera(pane: np.ndarray) -> float:
    got = resize(pane, (32, 32), anti_aliasing=True).ravel()
    expected = resize(data.camera().astype(float), (32, 32), anti_aliasing=True).ravel()
    return float(np.corrcoef(got, expected)[0, 1])


def _run_demo(tmp_path, extra_args, env):
    cmd = [sys.executable, "-m", "napari_miner", "--image", "camera", "--max-steps", "5"]
    result = subprocess.run(
        [*cmd, *extra_args],
        cwd=tmp_path,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "level 0 done" in result.stdout
    return result


def _assert_shows_camera(path):
    """The demo's grid: the input, then levels 3, 2, 1 and 0 of the fit, each a whole square image."""
    shot = imread(path)
    assert shot.ndim == 3 and shot.shape[-1] in (3, 4)
    panes = _panes(shot)
    assert len(panes) == 5
    assert all(abs(p.shape[0] - p.shape[1]) <= 2 for p in panes)  # square, whole images
    assert _correlation_with_camera(panes[0]) > 0.95  # the input
    assert _correlation_with_camera(panes[-1]) > 0.8  # level 0 after a short fit


@pytest.mark.viewer
def test_demo_screenshot(tmp_path):
    out = tmp_path / "shots" / "demo.png"
    result = _run_demo(tmp_path, ["--screenshot", str(out)], dict(os.environ))
    assert f"Saved screenshot to {out}" in result.stdout
    _assert_shows_camera(out)


@pytest.mark.viewer
@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="needs xvfb-run (apt: xvfb)")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_demo_without_display_reruns_under_xvfb(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("NAPARI_MINER_UNDER_XVFB", None)
    result = _run_demo(tmp_path, [], env)
    assert "No display found" in result.stdout
    _assert_shows_camera(tmp_path / HEADLESS_SCREENSHOT)
