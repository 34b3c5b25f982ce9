"""napari reader for ``*.miner.zarr`` model stores: a lazily decoded multiscale image and its overlay.

Which reader napari uses
------------------------
A model store is a zarr group in a folder named ``*.miner.zarr``. napari's builtin reader claims
``*.zarr`` and ``*.zarr/*``, napari-ome-zarr claims ``*.zarr*``: with this plugin installed,
three readers match a store. npe2 has no reader priority (``filename_patterns`` only filter), so
napari (``ViewerModel._open_or_raise_error``, used by drag and drop, *File ▸ Open*, and the
``napari`` command line) opens a path directly only when the user's reader preferences
(``settings.plugins.extension2reader``, *Preferences ▸ Plugins*) name a reader for it
(``napari.plugins.utils.get_preferred_reader``) or when one reader matches; otherwise it asks in a
dialog, and from code ``viewer.open(path, plugin=None)`` raises ``MultipleReaderError``.

So the plugin adds the reader preference ``"*.miner.zarr/" → napari-miner`` when it is activated
(npe2's ``on_activate``: the first time napari uses any of its contributions, i.e. its reader,
dock widget or sample data; see :func:`on_activate`), unless the user's preferences already say
something about model stores (:func:`register_reader_preference`). napari saves preferences, so
from then on dropping a store just opens it. This is the mechanism napari itself uses when the user
ticks "remember this choice" in its reader dialog, it is visible and removable in the preferences,
and it never overrides a choice of the user. The alternatives are worse: a store layout that no
other reader claims would mean renaming every existing ``*.miner.zarr`` store, and registering the
preference at import time would write napari settings from scripts that never start napari.

The pattern ends in a separator because napari matches folders as ``realpath + os.sep``
(``napari.plugins.utils._get_preferred_readers``); ``fnmatch`` normalises the separator on Windows.

``viewer.open(path)`` with napari 0.9's default ``plugin="napari"`` reads with napari's builtin
reader only, whatever the preferences; from code use ``plugin="napari-miner"`` or ``plugin=None``.

Layer order and selection
-------------------------
napari makes the last layer it inserts the selected, active layer
(``SelectableEventedList.insert``). The reader therefore returns the active-blocks overlay first,
hidden, and the image last, so that the image is selected (the overlay's Labels tools stay off and
it does not tint the image). In a viewer, the overlay is then moved just above its image, where it
shows when made visible, and volumes get a :mod:`~napari_miner._napari.volume_view` (see
:func:`read_models`).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Any

from napari_miner._napari.progressive_layer import REFRESHER_KEY
from napari_miner.io.schema import SUFFIX

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer
    from napari.settings import NapariSettings

    from napari_miner import MinerModel

LayerData = tuple[Any, dict[str, Any], str]

PLUGIN_NAME = "napari-miner"
"""This plugin's name in npe2 (the ``name`` of ``napari.yaml``)."""

READER_PATTERN = f"*{SUFFIX}/"
"""The reader preference this plugin adds: any folder whose name ends in ``.miner.zarr``."""

METADATA_KEY = "napari_miner"
"""Key of the reader's entry in its layers' ``metadata``: ``{"path", "role", "read_id"}``."""

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- preference
def _is_about_model_stores(pattern: str) -> bool:
    """Whether the reader preference ``pattern`` applies to model stores in general.

    A relative pattern that matches a store folder (as napari spells it, with a trailing
    separator) or the store's name (what a user types: ``*.miner.zarr``) does; absolute patterns
    name particular folders (napari's reader dialog remembers ``.zarr`` folders one by one).
    """
    sample = os.path.join(os.path.abspath(os.sep), "data", f"model{SUFFIX}")
    return fnmatch(sample + os.sep, pattern) or fnmatch(sample, pattern)


def register_reader_preference(settings: NapariSettings | None = None) -> bool:
    """Make napari open ``*.miner.zarr`` folders with this plugin, unless the user chose otherwise.

    Adds :data:`READER_PATTERN` → ``napari-miner`` to ``settings.plugins.extension2reader`` when
    no preference about model stores names another reader (a user's ``*.miner.zarr``,
    ``*.zarr/`` or ``*`` preference for another plugin is kept, and then napari keeps using it).
    Preferences for particular folders are left alone; napari ranks them above patterns.

    Parameters
    ----------
    settings : napari.settings.NapariSettings, optional
        The settings to change; napari's (``napari.settings.get_settings()``, saved to the user's
        settings file) by default.

    Returns
    -------
    bool
        Whether the preference was added (``False``: it was there already, or the user's
        preferences say otherwise).
    """
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    preferences = dict(settings.plugins.extension2reader)
    about_stores = {p: r for p, r in preferences.items() if _is_about_model_stores(p)}
    if READER_PATTERN in preferences or any(r != PLUGIN_NAME for r in about_stores.values()):
        return False
    settings.plugins.extension2reader = {**preferences, READER_PATTERN: PLUGIN_NAME}
    return True


def on_activate(context: Any = None) -> None:
    """npe2 activation hook (``on_activate`` in ``napari.yaml``): :func:`register_reader_preference`.

    npe2 activates a plugin the first time one of its commands runs in a napari session. Never
    raises (a failed activation would disable the plugin): a problem with napari's settings is
    logged as a warning.

    Parameters
    ----------
    context : npe2.PluginContext, optional
        The plugin's context (unused).
    """
    try:
        if register_reader_preference():
            logger.info("napari will open %s folders with %s", READER_PATTERN, PLUGIN_NAME)
    except Exception as error:  # napari missing, or its settings file unwritable
        logger.warning("could not add the napari reader preference for %s: %s", SUFFIX, error)


# -------------------------------------------------------------------------------------- reader
def _is_model_path(path: Any) -> bool:
    if not isinstance(path, str | os.PathLike):
        return False
    return os.fspath(path).rstrip("/\\").lower().endswith(SUFFIX)


def stem(path: str | os.PathLike[str]) -> str:
    """File name of ``path`` without the ``.miner.zarr`` suffix."""
    name = os.path.basename(os.fspath(path).rstrip("/\\"))
    return name[: -len(SUFFIX)] if name.lower().endswith(SUFFIX) else name


def get_reader(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_models` if ``path`` (or every path of a list) ends in ``.miner.zarr``."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if paths and all(_is_model_path(p) for p in paths):
        return read_models
    return None


def read_models(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[LayerData]:
    """Layer data tuples for one or more model stores (see :func:`model_layer_data`).

    The reader cannot see the viewer it reads for, but napari adds the layers right after it
    returns, on the same thread. When called on the main thread while a napari window is open,
    it watches ``napari.current_viewer()`` for the arrival of its layers (:func:`_arrange`): each
    overlay is moved just above its image, and a volume's image gets a
    :class:`~napari_miner._napari.volume_view.VolumeView`. Elsewhere (another viewer, or no
    viewer) the layers are as returned: overlay hidden under the selected image.

    Raises
    ------
    napari_miner.ModelFormatError
        If a store is missing, unreadable or of an unsupported version (napari shows the message).
    """
    from napari_miner import load

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    read_id = uuid.uuid4().hex
    layers: list[LayerData] = []
    models: list[tuple[dict[str, Any], dict[str, Any], MinerModel]] = []
    for p in paths:
        model = load(p)
        overlay, image = model_layer_data(model, stem(p))
        for (_, kwargs, _), role in ((overlay, "overlay"), (image, "image")):
            kwargs.setdefault("metadata", {})[METADATA_KEY] = {
                "path": os.fspath(p),
                "role": role,
                "read_id": read_id,
            }
        models.append((overlay[1]["metadata"], image[1]["metadata"], model))
        layers += [overlay, image]
    viewer = _current_viewer()
    if viewer is not None:
        _arrange(viewer, models)
    return layers


def model_layer_data(model: Any, name: str) -> list[LayerData]:
    """The active-block overlay of ``model`` and its lazy multiscale image, as layer data tuples.

    The overlay comes first and hidden, the image last: napari selects the last layer it adds.

    Parameters
    ----------
    model : MinerModel
        A fitted model.
    name : str
        Base name: the layers are ``"<name> · MINER active blocks"`` and ``"<name> · MINER"``.

    Returns
    -------
    list of tuple
        ``[(labels, kwargs, "labels"), (pyramid, kwargs, "image")]``.
    """
    from napari_miner.core.overlay import active_block_labels

    lo, hi = (float(v) for v in model.value_range)
    if not hi > lo:  # a constant image: napari needs a non-empty contrast range
        hi = lo + 1.0
    image_kwargs: dict[str, Any] = {
        "name": f"{name} · MINER",
        "multiscale": True,
        "rgb": bool(model.is_rgb),
        "contrast_limits": [lo, hi],
    }
    layout = model.layout
    if layout.channel_axis is not None and not model.is_rgb:
        image_kwargs["channel_axis"] = layout.channel_axis
    labels, scale, translate = active_block_labels(model)
    labels_kwargs = {
        "name": f"{name} · MINER active blocks",
        "scale": scale,
        "translate": translate,
        "opacity": 0.4,
        "visible": False,
    }
    from napari_miner._napari.progressive_layer import progressive_pyramid, supports_progressive

    if supports_progressive(model):  # tiles decoded off the main thread, visible ones first
        progressive, refresher = progressive_pyramid(model)
        pyramid: Any = progressive.levels
        image_kwargs["metadata"] = {REFRESHER_KEY: refresher}
    else:  # napari splits the channels: lazy dask arrays, which slice lazily
        pyramid = model.as_pyramid()
    return [
        (labels, labels_kwargs, "labels"),
        (pyramid, image_kwargs, "image"),
    ]


# --------------------------------------------------------------------------- in the viewer
def _current_viewer() -> napari.Viewer | None:
    """The viewer a reader called now reads for, as far as one can tell (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import napari
    except ImportError:  # pragma: no cover - the reader runs inside napari
        return None
    return napari.current_viewer()


def _arrange(
    viewer: napari.Viewer, models: list[tuple[dict[str, Any], dict[str, Any], MinerModel]]
) -> None:
    """Once each model's layers are in ``viewer``, put its overlay above its image; view volumes.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer the layers are expected in.
    models : list of tuple
        ``(overlay metadata, image metadata, model)`` per model, as in the layer data.

    Notes
    -----
    The handler is connected last to ``viewer.layers.events.inserted`` (after napari's own
    handlers) and disconnected when every image has arrived (all of its channels, for a model
    split by ``channel_axis``), or at the next turn of the Qt event loop, in case the layers went to
    another viewer or were never added.
    """
    waiting = [
        [overlay[METADATA_KEY], image[METADATA_KEY], model, _n_image_layers(model)]
        for overlay, image, model in models
    ]

    def on_inserted(event: Any) -> None:
        arrived = event.value.metadata.get(METADATA_KEY)
        for entry in waiting:
            overlay_key, image_key, model, _ = entry
            if arrived != image_key:
                continue
            entry[3] -= 1
            if entry[3] == 0:  # the model's last image layer: overlay above it
                image, layers = event.value, viewer.layers
                overlay = next(
                    (lay for lay in layers if lay.metadata.get(METADATA_KEY) == overlay_key), None
                )
                if overlay is not None and layers.index(overlay) < layers.index(image):
                    layers.move(layers.index(overlay), layers.index(image) + 1)
                _attach_if_volume(viewer, image, model)
            refresher = event.value.metadata.get(REFRESHER_KEY)
            if refresher is not None:
                refresher.add_layer(event.value)
        if all(entry[3] <= 0 for entry in waiting):
            disconnect()

    def disconnect() -> None:
        viewer.layers.events.inserted.disconnect(on_inserted)

    viewer.layers.events.inserted.connect(on_inserted, position="last")
    try:
        from qtpy.QtCore import QTimer
    except ImportError:  # pragma: no cover - napari.current_viewer() implies Qt
        return
    QTimer.singleShot(0, disconnect)


def _n_image_layers(model: MinerModel) -> int:
    """How many layers napari makes of the model's image: one per channel with ``channel_axis``."""
    layout = model.layout
    return layout.n_channels if layout.channel_axis is not None and not model.is_rgb else 1


def _attach_if_volume(viewer: napari.Viewer, layer: Layer, model: MinerModel) -> None:
    from napari_miner._napari.volume_view import attach_volume_view, is_volume_model

    if is_volume_model(model) and layer.multiscale and layer.ndim == 3:
        attach_volume_view(viewer, layer, model)
