"""Multiscale image layers whose tiles are decoded off the main thread.

napari slices a multiscale layer on the main thread (unless its experimental asynchronous slicing
is on), so a layer backed by decoding on demand would freeze the viewer for as long as the visible
tiles take to decode. A :class:`~napari_miner.io.progressive.ProgressivePyramid` answers at once
(tiles not decoded yet stand in as the nearest coarser level decoded, enlarged) and decodes them in a
background thread, visible tiles first; :class:`LayerRefresher` then redraws the layer on the main
thread whenever tiles of the current view are ready (at most one redraw queued at a time, so a
burst of tiles costs one redraw).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_warning
from qtpy.QtCore import QObject, Signal

from napari_miner.io.progressive import ProgressivePyramid

if TYPE_CHECKING:
    from napari.layers import Layer

__all__ = ["REFRESHER_KEY", "LayerRefresher", "progressive_pyramid", "supports_progressive"]

REFRESHER_KEY = "napari_miner_refresher"
"""Key of a progressive layer's :class:`LayerRefresher` in the layer's ``metadata``."""


class LayerRefresher(QObject):
    """Redraws the layers of a pyramid, on the main thread, when its visible tiles are ready.

    Create it on the main thread; :meth:`notify` may be called from any thread.
    """

    ready = Signal()

    def __init__(self, pyramid: ProgressivePyramid) -> None:
        super().__init__()
        self.pyramid = pyramid
        self._layers: list[weakref.ReferenceType[Layer]] = []
        self._queued = threading.Event()
        self.refreshes = 0
        self.ready.connect(self._refresh)

    def add_layer(self, layer: Layer) -> None:
        """Redraw ``layer`` when tiles are ready (held weakly); closes the pyramid with it.

        The refresher is also put in the layer's ``metadata`` (:data:`REFRESHER_KEY`).
        """
        layer = getattr(layer, "__wrapped__", layer)  # the layer behind a plugin's viewer proxy
        layer.metadata[REFRESHER_KEY] = self
        self._layers.append(weakref.ref(layer))
        weakref.finalize(layer, self.pyramid.close)

    @property
    def queued(self) -> bool:
        """Whether a redraw is asked for and not done yet."""
        return self._queued.is_set()

    def notify(self) -> None:
        """Ask for a redraw (any thread); ignored while one is already queued."""
        if not self._queued.is_set():
            self._queued.set()
            self.ready.emit()

    def _refresh(self) -> None:
        self._queued.clear()
        while self.pyramid.errors:  # tiles that could not be decoded: say so, once each
            error = self.pyramid.errors.pop(0)
            show_warning(f"napari-miner: a tile could not be decoded and stays blurred: {error}")
        if not self._layers:
            self._find_layers()
        for ref in list(self._layers):
            layer = ref()
            if layer is None:
                self._layers.remove(ref)
            else:
                # napari 0.9 reads a multiscale layer's coarsest level (its thumbnail level) once
                # and keeps it: forget it, or the stand-ins it first got would show for good
                forget = getattr(layer, "_reset_thumbnail_level_data", None)
                if forget is not None:
                    forget()
                layer.refresh()
                self.refreshes += 1

    def _find_layers(self) -> None:
        """Layers of the current viewer that show this pyramid (added without the reader's hook)."""
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            return
        for layer in viewer.layers:
            if getattr(layer, "multiscale", False) and layer.data[0] is self.pyramid.levels[0]:
                self.add_layer(layer)


def supports_progressive(model: Any) -> bool:
    """Whether ``model``'s image is one napari layer (not split into channels by napari)."""
    layout = model.layout
    return layout.channel_axis is None or bool(model.is_rgb)


def progressive_pyramid(model: Any, **kwargs: Any) -> tuple[ProgressivePyramid, LayerRefresher]:
    """A :class:`ProgressivePyramid` of ``model`` wired to a :class:`LayerRefresher` (main thread).

    ``kwargs`` go to :class:`ProgressivePyramid`. Register the layer that shows
    ``pyramid.levels`` with :meth:`LayerRefresher.add_layer`.
    """
    pyramid = ProgressivePyramid(model, **kwargs)
    refresher = LayerRefresher(pyramid)
    pyramid.on_ready = refresher.notify
    return pyramid, refresher
