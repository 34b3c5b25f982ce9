"""The debugging layers of a fit: its error map and the state of its blocks; main thread only.

* **Error map** — an Image layer of the error of the level shown (the running level, level 0 once
  the fit finished) on the fixed range ``0 .. ERROR_RANGE_PERCENT`` % of the input's value range
  (:mod:`napari_miner.core.error_map`), so that frames compare over time: per pixel against the
  level's target when the input is in memory, else per block from the errors training reports.
* **Block states** — a Labels layer over the shown level's block grid, one label per
  :class:`~napari_miner.core.block_state.BlockState` (pruned, waiting, training, retired, trained,
  grown) in the colours of :data:`STATE_COLORS`; napari's status bar names the state under the
  cursor, and :meth:`DebugLayers.block_info` describes the block there (level, state, parameters,
  loss) for the widget.

Both follow the layers of :class:`~._live_layers.LiveLayers` (the input's transform) and stay below
its active-blocks overlay. They are created hidden: the widget's debugging panel shows them (and
hides the active-blocks overlay while either is shown: its colours would tint them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_miner.core.block_state import BlockState
from napari_miner.core.error_map import ERROR_RANGE_PERCENT

if TYPE_CHECKING:
    from ._live_layers import LiveLayers
    from ._worker import BlockView

__all__ = [
    "ERROR_COLORMAP",
    "STATE_COLORS",
    "DebugLayers",
    "error_layer_name",
    "state_colormap",
    "states_layer_name",
]

ERROR_COLORMAP = "magma"
"""Colormap of the error map (black: no error, white: ``ERROR_RANGE_PERCENT`` % or more)."""

STATE_COLORS = {
    BlockState.PRUNED: "#4d4d4d",
    BlockState.WAITING: "#cfd8dc",
    BlockState.TRAINING: "#ffd600",
    BlockState.RETIRED: "#2e7d32",
    BlockState.TRAINED: "#1565c0",
    BlockState.GROWN: "#ff00ff",
}
"""Colour of each block state (unknown blocks are transparent)."""


def error_layer_name(name: str) -> str:
    """Name of the error map of the input ``name`` (it states the fixed range)."""
    return f"{name} · MINER error (0–{ERROR_RANGE_PERCENT:g} % of range)"


def states_layer_name(name: str) -> str:
    """Name of the block-state layer of the input ``name``."""
    return f"{name} · MINER block states"


def state_colormap() -> Any:
    """Labels colormap: one colour per :class:`BlockState`, unknown blocks transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[Any, Any] = {None: "transparent", int(BlockState.UNKNOWN): "transparent"}
    colors.update({int(state): color for state, color in STATE_COLORS.items()})
    return DirectLabelColormap(color_dict=colors)


def _state_features() -> dict[str, list]:
    """Features of the block-state labels: napari's status bar shows ``state: retired``."""
    return {"index": [int(s) for s in BlockState], "state": [s.label for s in BlockState]}


class DebugLayers:
    """Creates and refreshes the error map and block-state layers of one fit.

    Parameters
    ----------
    live : LiveLayers
        The fit's layers (their source, transforms and overlay).

    Attributes
    ----------
    error, states : napari.layers.Image, napari.layers.Labels or None
        The layers, once created.
    view : BlockView or None
        The blocks shown (level, report).
    error_mode : str or None
        ``"pixel"`` or ``"block"``: what :attr:`error` shows.
    error_level : int or None
        The level :attr:`error` shows.
    """

    def __init__(self, live: LiveLayers) -> None:
        self.live = live
        self.error: Any = None
        self.states: Any = None
        self.view: BlockView | None = None
        self.error_mode: str | None = None
        self.error_level: int | None = None
        self.visible = {"error": False, "states": False}

    # ------------------------------------------------------------------------- updates
    def show_pixel_error(self, level: int, error: np.ndarray) -> Any:
        """Show the per-pixel error map ``error`` (% of range) of ``level``."""
        self.error_mode = "pixel"
        return self._show_error(level, error, self.live.level_transform(level))

    def show_blocks(self, view: BlockView) -> Any:
        """Show the block states of ``view`` (and its per-block errors, when it has them)."""
        self.view = view
        scale, translate = self.live.block_transform(view.level)
        if self.error_mode != "pixel" and view.error is not None:
            self.error_mode = "block"
            self._show_error(view.level, view.error, (scale, translate))
        if not self._present(self.states):
            kwargs: dict[str, Any] = {"opacity": 0.7}
            if self.live.source.volume:
                kwargs = {"opacity": 0.2, "rendering": "translucent"}
            self.states = self.live.viewer.add_labels(
                view.report.state, name=states_layer_name(self.live.source.name), scale=scale,
                translate=translate, colormap=state_colormap(), features=_state_features(),
                visible=self.visible["states"], **kwargs,
            )  # fmt: skip
            self._adopt(self.states)
        else:
            self._update(self.states, view.report.state, scale, translate)
        self._sync_overlay()
        return self.states

    def _show_error(
        self, level: int, error: np.ndarray, transform: tuple[tuple[float, ...], ...]
    ) -> Any:
        scale, translate = transform
        self.error_level = level
        limits = (0.0, float(ERROR_RANGE_PERCENT))
        if not self._present(self.error):
            self.error = self.live.viewer.add_image(
                error, name=error_layer_name(self.live.source.name), scale=scale,
                translate=translate, colormap=ERROR_COLORMAP, contrast_limits=limits,
                visible=self.visible["error"],
            )  # fmt: skip
            self._adopt(self.error)
        else:
            self._update(self.error, error, scale, translate)
            self.error.contrast_limits = limits  # fixed, whatever the data
        return self.error

    def _update(self, layer: Any, data: np.ndarray, scale: Any, translate: Any) -> None:
        if layer.data.shape != data.shape or not np.allclose(layer.scale, scale):
            layer.scale, layer.translate = scale, translate
        layer.data = data

    def _adopt(self, layer: Any) -> None:
        self.live.extra.append(layer)
        self.live.raise_overlay()

    def _present(self, layer: Any) -> bool:
        return layer is not None and layer in self.live.viewer.layers

    # ---------------------------------------------------------------------- visibility
    def set_visible(self, which: str, visible: bool) -> None:
        """Show or hide the ``"error"`` or ``"states"`` layer (also when created later)."""
        self.visible[which] = visible
        layer = self.error if which == "error" else self.states
        if self._present(layer):
            layer.visible = visible
        self.raise_shown()
        self._sync_overlay(force=True)

    def raise_shown(self) -> None:
        """Keep the shown debugging layers on top of the fit's other layers (under the overlay)."""
        layers = self.live.viewer.layers
        shown = [layer for layer in (self.error, self.states) if self._present(layer)]
        shown = [layer for layer in shown if layer.visible]
        allowed = {layer.name for layer in shown}
        if self._present(self.live.overlay):
            allowed.add(self.live.overlay.name)
        for layer in shown:
            index = layers.index(layer)
            if any(other.name not in allowed for other in list(layers)[index + 1 :]):
                layers.move(index, len(layers))
        self.live.raise_overlay()

    def _sync_overlay(self, force: bool = False) -> None:
        """Hide the active-blocks overlay while a debugging layer is shown (show it again after)."""
        overlay, shown = self.live.overlay, any(self.visible.values())
        if self._present(overlay) and (force or shown):
            overlay.visible = not shown

    # ------------------------------------------------------------------------- reading
    def block_index(self, world: Any) -> tuple[int, ...] | None:
        """Block of the shown level under the world position ``world``, or ``None``."""
        if self.view is None:
            return None
        scale, translate = self.live.block_transform(self.view.level)
        ndim = len(scale)
        position = np.asarray(world, dtype=float)[-ndim:]
        if position.size < ndim:
            return None
        index = np.round((position - np.asarray(translate)) / np.asarray(scale)).astype(int)
        shape = self.view.report.shape
        if np.any(index < 0) or np.any(index >= np.asarray(shape)):
            return None
        return tuple(int(i) for i in index)

    def block_info(self, world: Any) -> str | None:
        """The block under ``world`` in words (level, block, state, parameters, loss)."""
        index = self.block_index(world)
        if index is None or self.view is None:
            return None
        return f"level {self.view.level} · {self.view.report.describe(index)}"
