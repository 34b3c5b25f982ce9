"""Fixtures for the napari-side tests: small images fitted with a tiny MINER config."""

from __future__ import annotations

import numpy as np
import pytest

from napari_miner import MinerConfig, MinerModel, fit

TINY = MinerConfig(n_levels=3, block_size=8, max_steps=30)
"""A config small enough for tests: 3 levels, 8x8 blocks, at most 30 steps per level."""


@pytest.fixture(autouse=True)
def napari_settings(monkeypatch):
    """napari's settings, fresh and never saved: plugin activation writes a reader preference."""
    import napari.settings
    from napari.settings import NapariSettings

    settings = NapariSettings(config_path=None)
    monkeypatch.setattr(napari.settings, "_SETTINGS", settings)
    return settings


@pytest.fixture(scope="session")
def fitted_models() -> dict[str, tuple[np.ndarray, MinerModel]]:
    """``{name: (image, model)}`` for small gray, RGB, constant and cameraman images.

    Odd sizes (not multiples of two or of the block size) on purpose.
    """
    from skimage import data

    rng = np.random.default_rng(1234)
    images = {
        "gray": rng.random((37, 50), dtype=np.float32),
        "rgb": rng.integers(0, 256, size=(45, 29, 3), dtype=np.uint8),
        "flat": np.full((8, 8), 7, dtype=np.uint8),
        "camera": data.camera()[::4, ::4],  # 128x128 uint8
    }
    return {name: (image, fit(image, TINY, device="cpu")) for name, image in images.items()}


@pytest.fixture(scope="session")
def fitted_camera(fitted_models) -> tuple[np.ndarray, MinerModel]:
    """``(image, model)``: a 128x128 cameraman and its 3-level MINER model."""
    return fitted_models["camera"]
