"""The ``*.miner.zarr`` reader: path matching, layer data, npe2 discovery, the reader preference
and a real viewer."""

from __future__ import annotations

import os

import npe2
import numpy as np
import pytest
from skimage.io import imsave
from skimage.transform import resize

import napari_miner
from napari_miner import MinerConfig, ModelFormatError, fit
from napari_miner._napari import reader as reader_module
from napari_miner._napari.reader import (
    READER_PATTERN,
    REFRESHER_KEY,
    get_reader,
    read_models,
    register_reader_preference,
)
from napari_miner.core.overlay import active_block_labels

PLUGIN = "napari-miner"


@pytest.fixture(scope="module")
def stores(fitted_models, tmp_path_factory) -> dict[str, tuple]:
    """``{name: (path, model)}``: the session's fitted models saved as ``<name>.miner.zarr``."""
    root = tmp_path_factory.mktemp("stores")
    out = {}
    for name in ("gray", "rgb", "flat"):
        _, model = fitted_models[name]
        path = root / f"{name}.miner.zarr"
        model.save(path)
        out[name] = (path, model)
    rng = np.random.default_rng(5)
    channels = fit(
        rng.random((2, 30, 41), dtype=np.float32),
        MinerConfig(n_levels=2, block_size=8, max_steps=10),
        device="cpu",
        channel_axis=0,
    )
    path = root / "two channels.miner.zarr"
    channels.save(path)
    out["channels"] = (path, channels)
    return out


# --------------------------------------------------------------------------- path matching
@pytest.mark.parametrize(
    "path",
    ["x.miner.zarr", "/data/fit.miner.zarr/", "C:\\fits\\A.MINER.ZARR", ["a.miner.zarr"]],
)
def test_get_reader_claims_miner_stores(path):
    assert get_reader(path) is read_models


@pytest.mark.parametrize(
    "path",
    [
        "x.zarr",
        "x.miner",
        "x.miner.zarr.zip",
        "miner.zarr",
        "x.tif",
        [],
        ["a.miner.zarr", "b.zarr"],
    ],
)
def test_get_reader_rejects_everything_else(path):
    assert get_reader(path) is None


def test_get_reader_accepts_path_objects(stores):
    path, _ = stores["gray"]
    assert get_reader(path) is read_models


# ----------------------------------------------------------------------------- layer data
def test_gray_layer_data(stores):
    path, model = stores["gray"]
    (labels, labels_kwargs, labels_type), (image, image_kwargs, image_type) = get_reader(str(path))(
        str(path)
    )
    assert image_type == "image" and labels_type == "labels"
    assert image_kwargs["name"] == "gray · MINER"
    assert image_kwargs["multiscale"] is True
    assert image_kwargs["rgb"] is False
    assert "channel_axis" not in image_kwargs
    assert image_kwargs["contrast_limits"] == list(model.value_range)
    assert [level.shape for level in image] == [model.decoded_shape(j) for j in range(3)]
    # tiles are decoded in the background: zeros (or the coarser level) first, then the values
    pyramid = image_kwargs["metadata"][REFRESHER_KEY].pyramid
    np.asarray(image[0])
    assert pyramid.wait_until_idle(60)
    np.testing.assert_allclose(np.asarray(image[0]), model.decode(0), atol=1e-5)
    assert pyramid.last_complete
    pyramid.close()

    expected, scale, translate = active_block_labels(model)
    assert labels_kwargs["name"] == "gray · MINER active blocks"
    np.testing.assert_array_equal(labels, expected)
    assert labels_kwargs["scale"] == scale == (8.0, 8.0)
    assert labels_kwargs["translate"] == translate == (3.5, 3.5)
    assert 0 < labels_kwargs["opacity"] < 1
    assert labels_kwargs["visible"] is False  # shown on demand: it tints the image
    assert labels.max() >= 1 and set(np.unique(labels)) <= {0, 1, 2, 3}


def test_rgb_layer_data(stores):
    path, model = stores["rgb"]
    _, (image, kwargs, _) = read_models(path)
    assert kwargs["rgb"] is True and "channel_axis" not in kwargs
    assert kwargs["contrast_limits"] == list(model.value_range)
    assert image[0].shape == model.shape and image[0].dtype == np.uint8


def test_constant_model_gets_a_non_empty_contrast_range(stores):
    path, _ = stores["flat"]
    _, (_, kwargs, _) = read_models(path)
    lo, hi = kwargs["contrast_limits"]
    assert lo == 7 and hi > lo


def test_channel_axis_model_is_split_into_channels(stores):
    path, model = stores["channels"]
    (labels, labels_kwargs, _), (image, kwargs, _) = read_models(path)
    assert kwargs["channel_axis"] == 0 and kwargs["rgb"] is False
    assert kwargs["name"] == "two channels · MINER"
    assert image[0].shape == (2, 30, 41)
    assert labels.shape == model.levels[0].grid.grid_shape
    assert labels_kwargs["name"] == "two channels · MINER active blocks"


def test_several_paths_give_layers_for_each(stores):
    paths = [str(stores["gray"][0]), str(stores["rgb"][0])]
    layers = get_reader(paths)(paths)
    assert [kwargs["name"] for _, kwargs, _ in layers] == [
        "gray · MINER active blocks",
        "gray · MINER",
        "rgb · MINER active blocks",
        "rgb · MINER",
    ]
    # every layer says which store it shows
    roles = [kwargs["metadata"]["napari_miner"] for _, kwargs, _ in layers]
    assert [(os.path.basename(r["path"]), r["role"]) for r in roles] == [
        ("gray.miner.zarr", "overlay"),
        ("gray.miner.zarr", "image"),
        ("rgb.miner.zarr", "overlay"),
        ("rgb.miner.zarr", "image"),
    ]


def test_bad_store_raises_the_model_format_error(tmp_path):
    missing = tmp_path / "missing.miner.zarr"
    with pytest.raises(ModelFormatError):
        read_models(str(missing))
    broken = tmp_path / "broken.miner.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    with pytest.raises(ModelFormatError):
        read_models(str(broken))


# ------------------------------------------------------------------------------------- npe2
def test_manifest_declares_the_reader():
    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    (reader,) = manifest.contributions.readers
    assert reader.filename_patterns == ["*.miner.zarr"]
    assert reader.accepts_directories is True
    assert reader.command == "napari-miner.get_reader"


def test_npe2_finds_the_reader_for_miner_stores_only(stores, tmp_path):
    pm = npe2.PluginManager()
    pm.discover()
    ours = "napari-miner.get_reader"
    path, _ = stores["gray"]
    assert ours in [r.command for r in pm.iter_compatible_readers([str(path)])]
    assert ours in [r.command for r in pm.iter_compatible_readers(["new.miner.zarr"])]
    assert ours not in [r.command for r in pm.iter_compatible_readers(["plain.zarr"])]
    assert ours not in [r.command for r in pm.iter_compatible_readers(["image.tif"])]


def _our_reader(pm: npe2.PluginManager, path: str):
    return next(r for r in pm.iter_compatible_readers([path]) if r.plugin_name == PLUGIN)


def test_npe2_reads_a_store_through_the_manifest(stores, tmp_path):
    pm = npe2.PluginManager()
    pm.discover()
    pm.activate(PLUGIN)  # registers the plugin's commands in this manager's registry
    path, _ = stores["gray"]
    reader = _our_reader(pm, str(path))
    read = reader.exec(kwargs={"path": [str(path)], "stack": False}, _registry=pm.commands)
    assert read is not None
    layers = read([str(path)], stack=False)
    assert [(kwargs["name"], kind) for _, kwargs, kind in layers] == [
        ("gray · MINER active blocks", "labels"),
        ("gray · MINER", "image"),
    ]
    # a plain zarr directory is offered to every directory reader; ours declines it
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    reader = _our_reader(pm, str(plain))
    assert reader.exec(kwargs={"path": [str(plain)], "stack": False}, _registry=pm.commands) is None


# -------------------------------------------------------------------------- reader preference
def _preferred(path) -> str | None:
    from napari.plugins.utils import get_preferred_reader

    return get_preferred_reader(str(path))


def test_reader_preference_is_added_once(napari_settings, stores, tmp_path):
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    path, _ = stores["gray"]
    assert _preferred(path) is None
    assert register_reader_preference() is True
    assert napari_settings.plugins.extension2reader == {READER_PATTERN: PLUGIN}
    assert register_reader_preference() is False
    assert napari_settings.plugins.extension2reader == {READER_PATTERN: PLUGIN}
    # napari matches folders as "realpath/": the pattern picks every store, and stores only
    assert _preferred(path) == PLUGIN
    assert _preferred(stores["channels"][0]) == PLUGIN  # a name with a space
    assert _preferred(plain) is None


@pytest.mark.parametrize(
    "users",
    [
        {READER_PATTERN: "napari"},  # the same pattern, another reader
        {"*.miner.zarr": "napari-ome-zarr"},  # what *Preferences* makes of ".miner.zarr"
        {"*.zarr/": "napari-ome-zarr"},  # every zarr folder
        {"*": "napari"},
    ],
)
def test_reader_preference_keeps_the_users_choice(napari_settings, users):
    napari_settings.plugins.extension2reader = {"*.tif": "napari", **users}
    assert register_reader_preference() is False
    assert napari_settings.plugins.extension2reader == {"*.tif": "napari", **users}


def test_reader_preference_joins_compatible_preferences(napari_settings, stores):
    path, _ = stores["gray"]
    other, _ = stores["rgb"]
    this_folder = os.path.realpath(path) + os.sep  # what napari's reader dialog remembers
    users = {"*.miner.zarr": PLUGIN, this_folder: "napari"}
    napari_settings.plugins.extension2reader = users
    assert register_reader_preference() is True
    assert napari_settings.plugins.extension2reader == {**users, READER_PATTERN: PLUGIN}
    assert _preferred(path) == "napari"  # napari ranks a folder above any pattern
    assert _preferred(other) == PLUGIN


def test_activating_the_plugin_adds_the_reader_preference(napari_settings):
    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    assert manifest.on_activate == "napari_miner._napari.reader:on_activate"
    pm = npe2.PluginManager()
    pm.discover()
    pm.activate(PLUGIN)
    assert napari_settings.plugins.extension2reader == {READER_PATTERN: PLUGIN}


def test_activation_survives_unwritable_settings(monkeypatch, caplog):
    def fail(settings=None):
        raise PermissionError("settings.yaml is read-only")

    monkeypatch.setattr(reader_module, "register_reader_preference", fail)
    reader_module.on_activate(None)
    assert "settings.yaml is read-only" in caplog.text


# ---------------------------------------------------------------------------- real viewer
def _as_gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    return image[..., :3].mean(axis=-1) if image.ndim == 3 else image


def _correlation(a: np.ndarray, b: np.ndarray, grid=(32, 32)) -> float:
    a = resize(_as_gray(a), grid, anti_aliasing=True).ravel()
    b = resize(_as_gray(b), grid, anti_aliasing=True).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def large_store(tmp_path_factory):
    """A 1024 x 1024 cameraman model: larger than the test canvas, so napari browses its levels."""
    from skimage import data

    image = np.repeat(np.repeat(data.camera(), 2, axis=0), 2, axis=1)
    config = MinerConfig(n_levels=3, block_size=16, max_steps=15, pixel_fraction=0.25)
    model = fit(image, config, device="cpu")
    path = tmp_path_factory.mktemp("large") / "camera.miner.zarr"
    model.save(path)
    return path, napari_miner.load(path)


def _settled_screenshot(viewer, qtbot, layer, level: int):
    """Screenshot once the layer shows ``level`` and two consecutive frames agree."""
    qtbot.waitUntil(lambda: viewer.screenshot(canvas_only=True, flash=False) is not None)
    qtbot.waitUntil(lambda: layer.data_level == level, timeout=10_000)
    refresher = layer.metadata.get(REFRESHER_KEY)
    if refresher is not None:  # tiles decoded in the background: wait for the last of them
        pyramid = refresher.pyramid
        qtbot.waitUntil(
            lambda: pyramid.last_complete and not pyramid.pending() and not refresher.queued,
            timeout=30_000,
        )
    previous = viewer.screenshot(canvas_only=True, flash=False)
    for _ in range(20):
        qtbot.wait(50)
        shot = viewer.screenshot(canvas_only=True, flash=False)
        if np.array_equal(shot, previous):
            return shot
        previous = shot
    return shot


@pytest.mark.viewer
def test_viewer_opens_a_store_and_shows_full_resolution_tiles(
    make_napari_viewer, qtbot, large_store
):
    path, model = large_store
    viewer = make_napari_viewer(show=True)
    # a small canvas (about 460 x 410), so that at zoom 1 only part of the image is on screen
    qt_viewer = viewer.window._qt_viewer
    for dock in (qt_viewer.dockLayerList, qt_viewer.dockLayerControls, qt_viewer.dockConsole):
        dock.setVisible(False)
    viewer.window._qt_window.resize(420, 380)

    layers = viewer.open(str(path), plugin=PLUGIN)
    assert [layer.name for layer in layers] == [
        "camera · MINER active blocks",
        "camera · MINER",
    ]
    overlay, image = layers
    assert image.multiscale and len(image.data) == model.n_levels
    assert tuple(overlay.scale) == (16.0, 16.0) and tuple(overlay.translate) == (7.5, 7.5)
    assert not overlay.visible

    # the whole image on screen: napari shows a coarse level
    viewer.reset_view()
    qtbot.waitUntil(lambda: image.data_level > 0, timeout=10_000)

    # zoom in to 1 screen pixel = 1 image pixel around (y, x) = (300, 420)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (300.0, 420.0)
    camera.zoom = 1.0
    shot = _settled_screenshot(viewer, qtbot, image, level=0)
    png = path.parent / "zoomed.png"
    imsave(png, shot, check_contrast=False)
    # the tiles were decoded off the main thread and the layer redrawn when they were ready
    refresher = image.metadata[REFRESHER_KEY]
    assert refresher.refreshes > 0 and refresher.pyramid.last_complete
    # napari loaded only the chunks around the view, not all of level 0
    corners = np.asarray(image.corner_pixels)
    assert np.all(corners[1] - corners[0] < 1023), corners

    h, w = shot.shape[:2]
    y0, x0 = round(300 - h / 2), round(420 - w / 2)
    assert y0 >= 0 and x0 >= 0 and y0 + h <= 1024 and x0 + w <= 1024
    region = model.decode(0, region=(slice(y0, y0 + h), slice(x0, x0 + w)))
    corr = _correlation(shot, region, grid=(64, 64))
    assert corr > 0.95, f"correlation {corr:.3f}, screenshot in {png}"
    # a control: another region of the same image does not match
    other = model.decode(0, region=(slice(y0 + 300, y0 + 300 + h), slice(x0 + 300, x0 + 300 + w)))
    control = _correlation(shot, other, grid=(64, 64))
    assert control < corr - 0.4, (corr, control)
    # and at 1:1 the screen pixels are the decoded pixels (grey colormap, limits = value range)
    centre = _as_gray(shot)[h // 2 - 50 : h // 2 + 50, w // 2 - 50 : w // 2 + 50]
    truth = region[h // 2 - 50 : h // 2 + 50, w // 2 - 50 : w // 2 + 50].astype(float)
    best = min(
        np.abs(np.roll(centre, (dy, dx), axis=(0, 1)) - truth)[2:-2, 2:-2].mean()
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )
    assert best < 4.0, best


def _no_reader_dialog(monkeypatch):
    """Fail instead of opening napari's modal "choose reader" dialog (it would block the test)."""
    import napari._qt.qt_viewer

    def dialog(*args, **kwargs):
        raise AssertionError("napari asked which reader to use")

    monkeypatch.setattr(napari._qt.qt_viewer, "handle_gui_reading", dialog)


@pytest.mark.viewer
def test_dropped_store_opens_with_the_image_selected(make_napari_viewer, stores, monkeypatch):
    from napari.components.viewer_model import MultipleReaderError
    from qtpy.QtCore import QUrl

    viewer = make_napari_viewer()
    path, model = stores["gray"]
    # napari's own rule: three readers match a store, and without a preference it asks
    with pytest.raises(MultipleReaderError):
        viewer.open(str(path), plugin=None)
    assert len(viewer.layers) == 0

    reader_module.on_activate(None)  # what npe2 calls the first time napari uses the plugin
    _no_reader_dialog(monkeypatch)
    # what dropping the folder on the canvas does
    viewer.window._qt_viewer._open_from_list_of_urls_data(
        [QUrl.fromLocalFile(str(path))], stack=False, choose_plugin=False
    )
    assert [layer.name for layer in viewer.layers] == ["gray · MINER", "gray · MINER active blocks"]
    image, overlay = viewer.layers
    assert viewer.layers.selection.active is image and set(viewer.layers.selection) == {image}
    assert image.multiscale and image.visible and image.source.reader_plugin == PLUGIN
    assert not overlay.visible and overlay.opacity == pytest.approx(0.4)
    assert viewer.layers.index(overlay) == viewer.layers.index(image) + 1  # above, when shown
    np.testing.assert_allclose(np.asarray(image.data[1]), model.decode(1), atol=1e-5)

    # File > Open and `napari x.miner.zarr` go through the same path: plugin=None
    rgb, _ = stores["rgb"]
    overlay2, image2 = viewer.open(str(rgb), plugin=None)
    assert [layer.name for layer in viewer.layers][-2:] == [
        "rgb · MINER",
        "rgb · MINER active blocks",
    ]
    assert viewer.layers.selection.active is image2 and not overlay2.visible


@pytest.mark.viewer
def test_a_users_reader_preference_wins(make_napari_viewer, stores, napari_settings):
    from napari.components.viewer_model import ReaderPluginError

    napari_settings.plugins.extension2reader = {READER_PATTERN: "napari"}
    reader_module.on_activate(None)
    assert napari_settings.plugins.extension2reader == {READER_PATTERN: "napari"}
    viewer = make_napari_viewer()
    path, _ = stores["gray"]
    with pytest.raises(ReaderPluginError, match="Tried opening with napari"):
        viewer.open(str(path), plugin=None)  # napari's own reader, as the user asked


@pytest.mark.viewer
def test_plain_zarr_still_opens_with_naparis_reader(make_napari_viewer, tmp_path):
    import zarr

    register_reader_preference()
    plain = tmp_path / "plain.zarr"
    array = zarr.create_array(plain, shape=(20, 30), chunks=(10, 10), dtype="uint8")
    values = np.arange(600, dtype=np.uint8).reshape(20, 30)
    array[:] = values
    assert _preferred(plain) is None
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(plain))
    assert layer.source.reader_plugin == "napari"
    np.testing.assert_array_equal(np.asarray(layer.data), values)


@pytest.mark.viewer
def test_channel_store_keeps_its_overlay_above_every_channel(make_napari_viewer, stores):
    viewer = make_napari_viewer()
    path, model = stores["channels"]
    added = viewer.open(str(path), plugin=PLUGIN)
    assert len(added) == 1 + model.layout.n_channels == 3
    *channels, overlay = viewer.layers
    assert overlay.name == "two channels · MINER active blocks" and not overlay.visible
    assert all(layer.multiscale and layer.visible for layer in channels)
    assert viewer.layers.selection.active is channels[-1]
