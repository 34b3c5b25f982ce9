"""The npe2 manifest is valid, shipped with the package, and discoverable."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import npe2
import pytest

PLUGIN = "napari-miner"
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_manifest_from_distribution_is_valid():
    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    assert manifest.name == PLUGIN
    manifest.validate_imports()  # every python_name resolves to an importable callable
    keys = {c.key: c.display_name for c in manifest.contributions.sample_data}
    assert keys == {"astronaut": "Astronaut (MINER)", "retina": "Retina crop (MINER)"}


def test_packaged_manifest_is_the_top_level_file():
    top_level = REPO_ROOT / "napari.yaml"
    if not top_level.is_file():
        pytest.skip("not running from a source checkout")
    packaged = resources.files("napari_miner").joinpath("napari.yaml").read_text()
    assert packaged == top_level.read_text()


def test_npe2_validate_cli():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", PLUGIN, "--imports"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_plugin_manager_discovers_sample_data():
    pm = npe2.PluginManager()
    pm.discover()
    assert PLUGIN in pm
    samples = dict(pm.iter_sample_data())[PLUGIN]
    by_key = {s.key: s for s in samples}
    assert set(by_key) == {"astronaut", "retina"}
    pm.activate(PLUGIN)  # registers the plugin's commands in this manager's registry
    (data, kwargs, layer_type), *rest = by_key["astronaut"].open(_registry=pm.commands)
    assert rest == []
    assert layer_type == "image"
    assert kwargs["rgb"] is True
    assert data.shape == (512, 512, 3)


def test_plugin_manager_discovers_the_dock_widget():
    pm = npe2.PluginManager()
    pm.discover()
    widgets = {w.display_name: w for w in pm.iter_widgets() if w.plugin_name == PLUGIN}
    assert list(widgets) == ["MINER fit"]
    from napari_miner._napari.widget import MinerWidget

    command = pm.get_command(widgets["MINER fit"].command)
    assert npe2.manifest.utils.import_python_name(command.python_name) is MinerWidget
