"""The library and the command line work without napari, magicgui or Qt (the `napari` extra)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[1]
GUI = ("napari", "magicgui", "qtpy", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6")


def test_gui_packages_are_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"]).lower()
    assert not any(name.lower() in required for name in GUI)
    assert {"napari", "magicgui", "qtpy", "superqt"} <= set(
        project["optional-dependencies"]["napari"]
    )


def test_fit_save_load_and_cli_without_gui_packages(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        for name in {GUI!r}:
            sys.modules[name] = None  # importing any of them now fails
        import numpy as np
        import torch
        torch.set_num_threads(1)
        import napari_miner as nm
        from napari_miner.cli import main

        image = (np.add.outer(np.arange(40), np.arange(36)) % 17).astype(np.uint8)
        config = nm.MinerConfig(n_levels=2, block_size=8, max_steps=5)
        nm.fit(image, config, device="cpu").save({str(tmp_path / "m.miner.zarr")!r})
        assert nm.load({str(tmp_path / "m.miner.zarr")!r}).decode().shape == (40, 36)
        sys.exit(main(["info", {str(tmp_path / "m.miner.zarr")!r}, "--json"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert '"shape": [40, 36]' in done.stdout
