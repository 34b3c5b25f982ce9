"""Show a fitted volume in 3D at the finest pyramid level that fits a voxel budget.

In 3D, napari renders only the coarsest level of a multiscale layer
(``ScalarFieldBase._update_level_and_corners``: "3D: use the coarsest level"), so a MINER volume
opened as a multiscale layer looks coarse. A :class:`VolumeView` fixes that for one multiscale
layer of a volume model:

* in 2D nothing changes: the multiscale layer browses the pyramid tile by tile;
* when the viewer enters 3D (``viewer.dims.ndisplay == 3``), the finest level ``j`` with at most
  ``voxel_budget`` voxels is decoded in a worker thread (:func:`napari.qt.threading.create_worker`),
  while napari shows the coarsest level; it then appears as a separate, single-scale Image layer
  just above the multiscale one (scale ``2**j`` and translate ``(2**j - 1) / 2`` per axis on top of
  the layer's own transform, :func:`~napari_miner._napari.levels.level_transform`), which is hidden;
* back in 2D, the 3D layer is removed and the multiscale layer shown again, with the display
  settings (contrast limits, colormap, ...) and visibility the 3D layer had.

A separate layer rather than the multiscale layer itself: napari 0.9 does not let a layer's data
change between multiscale and single-scale (``ScalarFieldBase.data``), and rendering a finer level
of the multiscale layer (``locked_data_level``, which is also the user's *resolution* control)
would decode it on the main thread while napari slices, freezing the viewer for large levels. The
last decoded level is kept, so going back and forth between 2D and 3D decodes it once.

:func:`attach_volume_view` attaches a view (the reader does for the volumes it opens);
:func:`volume_view_of` finds a layer's view.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from napari_miner.core.errors import InvalidInputError

from .levels import level_transform

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Layer

    from napari_miner import MinerModel

VOXEL_BUDGET = 256**3
"""Default voxel budget of the 3D view: levels with more voxels are not shown in 3D."""

SHARED_SETTINGS = (
    "colormap",
    "contrast_limits_range",
    "contrast_limits",
    "gamma",
    "opacity",
    "blending",
    "rendering",
    "iso_threshold",
    "attenuation",
    "interpolation3d",
    "depiction",
)
"""Display settings copied to the 3D layer when it appears, and back when it goes."""

METADATA_KEY = "napari_miner"
"""Key of ``{"role": "volume view", "level": j}`` in the 3D layer's ``metadata``."""

_VIEWS: weakref.WeakKeyDictionary[Layer, VolumeView] = weakref.WeakKeyDictionary()


def is_volume_model(model: MinerModel) -> bool:
    """Whether ``model`` is a single-channel volume: three spatial axes, not RGB, no channel axis."""
    layout = model.layout
    return bool(layout.is_volume and not model.is_rgb and layout.channel_axis is None)


def finest_level_within(level_shapes: Sequence[Sequence[int]], voxel_budget: int) -> int:
    """Index of the finest level with at most ``voxel_budget`` voxels (the coarsest if none has).

    Parameters
    ----------
    level_shapes : sequence of sequence of int
        Spatial shape of every level, finest (level 0) first.
    voxel_budget : int
        Most voxels a level may have.
    """
    for level, shape in enumerate(level_shapes):
        if math.prod(int(s) for s in shape) <= voxel_budget:
            return level
    return len(level_shapes) - 1


def _check_budget(voxel_budget: Any) -> int:
    if isinstance(voxel_budget, bool) or not isinstance(voxel_budget, int | np.integer):
        raise InvalidInputError(f"voxel_budget must be a positive integer, got {voxel_budget!r}")
    if voxel_budget < 1:
        raise InvalidInputError(f"voxel_budget must be a positive integer, got {voxel_budget!r}")
    return int(voxel_budget)


class _Failed(NamedTuple):
    """A decode that raised: returned, not raised (napari would report a raised error as unhandled)."""

    error: Exception


def _decode(model: MinerModel, level: int, lazy: Any) -> np.ndarray | _Failed:
    """Decode ``level`` (in a worker thread): the model's own level, or a downsampled one."""
    try:
        if level < model.n_levels:
            return model.decode(level=level)
        return np.asarray(lazy)  # a coarser level appended to the pyramid (area averages)
    except Exception as error:
        return _Failed(error)


class VolumeView:
    """Shows a volume model's multiscale ``layer`` in 3D at the finest level within a budget.

    Use :func:`attach_volume_view` to make one. See the module's docstring for the behaviour.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer holding ``layer``.
    layer : napari.layers.Image
        A multiscale layer of ``model`` (its data: ``model.as_pyramid()``).
    model : MinerModel
        The volume model, used to decode levels.
    voxel_budget : int
        Most voxels of the level shown in 3D.
    """

    def __init__(
        self, viewer: napari.Viewer, layer: Image, model: MinerModel, voxel_budget: int
    ) -> None:
        # weak references: the registry holds views by their layer, and neither the view nor the
        # registry may keep a closed viewer or a removed layer alive
        self._viewer_ref = weakref.ref(viewer)
        self._layer_ref = weakref.ref(layer)
        self.model = model
        self._level_shapes = [tuple(int(s) for s in shape) for shape in layer.level_shapes]
        self._budget = _check_budget(voxel_budget)
        self._volume: Image | None = None
        self._shown_level: int | None = None
        self._decoded: tuple[int, np.ndarray] | None = None  # the last decoded level only
        self._decoding: int | None = None
        self._worker: Any = None
        self._generation = 0
        self._own_changes = 0
        self._attached = True
        viewer.dims.events.ndisplay.connect(self._update)
        viewer.layers.events.removed.connect(self._on_removed)
        layer.events.visible.connect(self._on_visible)
        self._update()

    # ------------------------------------------------------------------------------ public
    @property
    def viewer(self) -> napari.Viewer | None:
        """The viewer, ``None`` once it is gone."""
        return self._viewer_ref()

    @property
    def layer(self) -> Image | None:
        """The multiscale layer, ``None`` once it is gone."""
        return self._layer_ref()

    @property
    def voxel_budget(self) -> int:
        """Most voxels of the level shown in 3D; setting it in 3D shows the level it admits."""
        return self._budget

    @voxel_budget.setter
    def voxel_budget(self, value: int) -> None:
        self._budget = _check_budget(value)
        self._update()

    @property
    def level(self) -> int:
        """The pyramid level that 3D shows under the current budget."""
        return finest_level_within(self._level_shapes, self._budget)

    @property
    def volume_layer(self) -> Image | None:
        """The 3D layer while it is in the viewer, else ``None``."""
        return self._volume

    @property
    def shown_level(self) -> int | None:
        """The level the 3D layer holds, ``None`` without a 3D layer."""
        return self._shown_level

    @property
    def decoding(self) -> bool:
        """Whether a level is being decoded in a worker thread."""
        return self._decoding is not None

    @property
    def attached(self) -> bool:
        """Whether the view still follows the viewer (:meth:`detach` ends it)."""
        return self._attached

    def detach(self) -> None:
        """Stop following the viewer: remove the 3D layer and show the multiscale layer again."""
        if not self._attached:
            return
        self._attached = False
        self._generation += 1  # a decode still running is dropped
        self._decoding = None
        self._remove_volume()
        viewer, layer = self.viewer, self.layer
        if viewer is not None:
            viewer.dims.events.ndisplay.disconnect(self._update)
            viewer.layers.events.removed.disconnect(self._on_removed)
        if layer is not None:
            layer.events.visible.disconnect(self._on_visible)
            if _VIEWS.get(layer) is self:
                del _VIEWS[layer]

    # --------------------------------------------------------------------------- internals
    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Changes made by the view itself, which its event handlers ignore."""
        self._own_changes += 1
        try:
            yield
        finally:
            self._own_changes -= 1

    def _update(self, event: Any = None) -> None:
        """Show what the display mode, the budget and the cache call for."""
        viewer, layer = self.viewer, self.layer
        if not self._attached or self._own_changes or viewer is None or layer is None:
            return
        level = self.level
        if viewer.dims.ndisplay != 3 or level >= len(self._level_shapes) - 1:
            self._remove_volume()  # 2D, or napari's own 3D level is the one to show
            return
        if self._shown_level == level:
            return
        if self._decoded is not None and self._decoded[0] == level:
            self._show(viewer, layer, level, self._decoded[1])
        elif self._decoding != level and (self._volume is not None or layer.visible):
            self._start_decoding(layer, level)

    def _start_decoding(self, layer: Image, level: int) -> None:
        from napari.qt.threading import create_worker

        self._generation += 1
        self._decoding = level
        lazy = layer.data[level]  # read on the main thread; decoded in the worker
        worker = create_worker(_decode, self.model, level, lazy, _start_thread=False)
        view, generation = weakref.ref(self), self._generation

        def returned(data: np.ndarray | _Failed) -> None:  # the worker may outlive the view
            if (alive := view()) is not None:
                alive._on_decoded(level, generation, data)

        worker.returned.connect(returned)
        self._worker = worker
        worker.start()

    def _on_decoded(self, level: int, generation: int, data: np.ndarray | _Failed) -> None:
        if generation != self._generation:
            return
        self._decoding, self._worker = None, None
        if isinstance(data, _Failed):
            from napari.utils.notifications import show_warning

            name = getattr(self.layer, "name", "a volume")
            show_warning(
                f"napari-miner could not decode level {level} of {name!r} for 3D: {data.error}"
            )
            return
        self._decoded = (level, data)
        self._update()

    @staticmethod
    def _level_placement(source: Image, level: int) -> dict[str, Any]:
        """Transform keywords that place ``level``'s voxels over the multiscale layer's."""
        from napari.utils.transforms import Affine

        factor, offset = level_transform(level, source.ndim)
        to_physical = Affine(
            scale=source.scale, translate=source.translate, rotate=source.rotate, shear=source.shear
        )
        return {
            "scale": tuple(np.asarray(source.scale) * np.asarray(factor)),
            "translate": tuple(to_physical(np.asarray(offset))),
        }

    def _show(self, viewer: napari.Viewer, source: Image, level: int, data: np.ndarray) -> None:
        from napari.layers import Image

        layers = viewer.layers
        name = f"{source.name} (3D, level {level})"
        metadata = {METADATA_KEY: {"role": "volume view", "level": level}}
        placement = self._level_placement(source, level)
        # another level replaces the 3D layer: vispy 0.15 can fail to draw (and abort) when a
        # volume's data is resized and the layer removed before the next frame
        previous = self._volume
        settings_from = source if previous is None else previous
        with self._changing():
            volume = Image(
                data,
                name=name,
                metadata=metadata,
                rotate=source.rotate,
                shear=source.shear,
                affine=source.affine,
                axis_labels=source.axis_labels,
                units=source.units,
                **placement,
            )
            _copy_settings(settings_from, volume)
            volume.visible = settings_from.visible
            replaced = source if previous is None else previous
            selected = list(layers.selection)
            layers.insert(layers.index(replaced) + 1, volume)  # napari selects it
            if previous is not None:
                layers.remove(previous)
            layers.selection.clear()
            layers.selection.update(volume if layer is replaced else layer for layer in selected)
            source.visible = False
            self._volume, self._shown_level = volume, level

    def _remove_volume(self) -> None:
        """Remove the 3D layer, handing its settings and visibility back to the multiscale layer."""
        volume, source, viewer = self._volume, self.layer, self.viewer
        if volume is None:
            return
        self._volume, self._shown_level = None, None
        with self._changing():
            if source is not None:
                _copy_settings(volume, source)
                source.visible = volume.visible
            if viewer is not None and volume in viewer.layers:
                layers = viewer.layers
                selected = list(layers.selection)
                layers.remove(volume)
                if source in layers:
                    layers.selection.clear()
                    kept = (source if layer is volume else layer for layer in selected)
                    layers.selection.update(layer for layer in kept if layer in layers)

    def _on_removed(self, event: Any) -> None:
        if self._own_changes:
            return
        if event.value is self.layer:
            self.detach()
        elif event.value is self._volume:  # the user deleted the 3D layer: show the multiscale
            self._volume, self._shown_level = None, None
            if self.layer is not None:
                with self._changing():
                    self.layer.visible = True

    def _on_visible(self, event: Any) -> None:
        """The user showed the hidden multiscale layer in 3D: decode its 3D level now."""
        layer = self.layer
        if not self._own_changes and layer is not None and layer.visible and self._volume is None:
            self._update()


def _copy_settings(source: Layer, target: Layer) -> None:
    for name in SHARED_SETTINGS:
        if hasattr(source, name) and hasattr(target, name):
            setattr(target, name, getattr(source, name))


def volume_view_of(layer: Layer) -> VolumeView | None:
    """The :class:`VolumeView` attached to ``layer``, if any."""
    return _VIEWS.get(layer)


def attach_volume_view(
    viewer: napari.Viewer,
    layer: Image,
    model: MinerModel,
    voxel_budget: int = VOXEL_BUDGET,
) -> VolumeView:
    """Show ``layer`` in 3D at the finest level of ``model`` with at most ``voxel_budget`` voxels.

    A view already attached to ``layer`` is detached first. The view detaches itself when
    ``layer`` is removed from the viewer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer holding ``layer``.
    layer : napari.layers.Image
        The multiscale layer of ``model`` (e.g. from the reader, or the dock widget's final layer).
    model : MinerModel
        A single-channel volume model (:func:`is_volume_model`).
    voxel_budget : int
        Most voxels of the level shown in 3D (default :data:`VOXEL_BUDGET`).

    Returns
    -------
    VolumeView
        The view; change ``view.voxel_budget`` to show another level, ``view.detach()`` to stop.

    Raises
    ------
    napari_miner.InvalidInputError
        If ``model`` is not a single-channel volume, ``layer`` is not a multiscale 3D layer in
        ``viewer`` shaped like ``model``, or ``voxel_budget`` is not a positive integer.
    """
    _check_budget(voxel_budget)
    if not is_volume_model(model):
        raise InvalidInputError(
            f"a 3D view needs a single-channel volume model, got one of shape {model.shape} "
            f"(rgb={model.is_rgb}, channel_axis={model.layout.channel_axis})"
        )
    if not getattr(layer, "multiscale", False) or layer not in viewer.layers:
        raise InvalidInputError(f"layer {layer.name!r} must be a multiscale layer of the viewer")
    if tuple(int(s) for s in layer.level_shapes[0]) != tuple(model.shape):
        raise InvalidInputError(
            f"layer {layer.name!r} has shape {tuple(layer.level_shapes[0])}, "
            f"the model {tuple(model.shape)}"
        )
    previous = _VIEWS.get(layer)
    if previous is not None:
        previous.detach()
    view = VolumeView(viewer, layer, model, voxel_budget)
    _VIEWS[layer] = view
    return view
