"""Shared fixtures for the whole test suite."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

NO_DISPLAY = (
    "needs a display: install Xvfb (apt-get install xvfb) and pytest-xvfb "
    "(pip install -e '.[test]'), which starts it for the tests"
)


def pytest_configure(config):
    """Run torch single-threaded in tests (override with ``NAPARI_MINER_TEST_THREADS``).

    The test problems are tiny; with 2 cores, torch's intra-op thread pool only adds overhead,
    and it slows down by 10-100x when another process competes for the cores.
    """
    import torch

    torch.set_num_threads(int(os.environ.get("NAPARI_MINER_TEST_THREADS", "1")))


def _display_available() -> bool:
    """Whether Qt can open windows (pytest-xvfb sets DISPLAY before collection)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator, so that every test run sees the same data."""
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def camera() -> np.ndarray:
    """scikit-image's 512x512 ``uint8`` cameraman."""
    from skimage import data

    return data.camera()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's 512x512x3 ``uint8`` astronaut."""
    from skimage import data

    return data.astronaut()


@pytest.fixture
def small_gray(rng) -> np.ndarray:
    """A small, odd-sized ``float32`` grayscale image in [0, 1] (sizes not a power of two)."""
    return rng.random((37, 50), dtype=np.float32)


@pytest.fixture
def small_rgb(rng) -> np.ndarray:
    """A small, odd-sized ``uint8`` RGB image."""
    return rng.integers(0, 256, size=(45, 29, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def has_cuda() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests without CUDA, and ``viewer`` tests without a display.

    On CI (``CI`` set) a missing display fails the viewer tests instead: they must run there.
    """
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        cuda = False
    display = _display_available()
    on_ci = bool(os.environ.get("CI"))
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "viewer" in item.keywords and not display:
            if on_ci:
                item.user_properties.append(("fail_without_display", True))
            else:
                item.add_marker(pytest.mark.skip(reason=NO_DISPLAY))


def pytest_runtest_setup(item):
    """Fail (before any Qt fixture could abort the process) viewer tests that cannot run."""
    if ("fail_without_display", True) in item.user_properties:
        pytest.fail(NO_DISPLAY)
