"""The refresher of a progressive layer: redraws once per burst and reports tiles that failed."""

from __future__ import annotations

import threading

import numpy as np

from napari_miner._napari import progressive_layer
from napari_miner._napari.progressive_layer import REFRESHER_KEY, progressive_pyramid


def test_failed_tiles_are_reported_once_and_redraws_are_coalesced(
    make_napari_viewer, fitted_models, monkeypatch, qtbot
):
    _, model = fitted_models["camera"]
    shown = []
    monkeypatch.setattr(progressive_layer, "show_warning", shown.append)
    viewer = make_napari_viewer()
    pyramid, refresher = progressive_pyramid(model)
    try:
        layer = viewer.add_image(pyramid.levels, multiscale=True)
        refresher.add_layer(layer)
        assert layer.metadata[REFRESHER_KEY] is refresher
        # the tiles napari asked for when the layer was added: decoded and drawn
        qtbot.waitUntil(
            lambda: (
                pyramid.wait_until_idle(0.01) and pyramid.last_complete and not refresher.queued
            ),
            timeout=10000,
        )
        pyramid.on_ready = None  # from here on, only the notifications below
        pyramid.errors.append(RuntimeError("damaged tile"))
        before = refresher.refreshes
        burst = threading.Thread(target=lambda: [refresher.notify() for _ in range(3)])
        burst.start()  # tiles arrive in the background thread: one redraw for the burst
        burst.join()
        qtbot.waitUntil(lambda: not refresher.queued, timeout=5000)
        assert refresher.refreshes == before + 1
        assert len(shown) == 1 and "damaged tile" in shown[0] and not pyramid.errors
    finally:
        pyramid.close()


def test_the_coarsest_level_shows_its_decoded_tiles(make_napari_viewer, fitted_models, qtbot):
    """napari keeps the first read of a multiscale layer's coarsest level (its thumbnail level):
    once the tiles are decoded, a view at that level and the thumbnail must show them."""
    image, model = fitted_models["camera"]
    viewer = make_napari_viewer()
    pyramid, refresher = progressive_pyramid(model)
    try:
        layer = viewer.add_image(pyramid.levels, multiscale=True, contrast_limits=(0, 255))
        refresher.add_layer(layer)
        layer.locked_data_level = len(pyramid.levels) - 1  # view the coarsest level
        layer.refresh()
        qtbot.waitUntil(
            lambda: (
                pyramid.wait_until_idle(0.01) and pyramid.last_complete and not refresher.queued
            ),
            timeout=10000,
        )
        coarsest = model.decode(model.n_levels - 1)
        assert layer.data_level == len(pyramid.levels) - 1
        assert np.array_equal(np.asarray(layer._slice.image.raw), coarsest)
        assert layer.thumbnail[..., :3].max() > 0
    finally:
        pyramid.close()
