"""The progress model: events in, the state that the CLI, the demo and the widget show out."""

import math

import numpy as np
import pytest
from skimage import data

import napari_miner as nm
from napari_miner.core.events import Finished, Progress, ScaleStarted, TileFinished
from napari_miner.core.overlay import active_block_labels
from napari_miner.fitting.progress import FitProgress, format_db

CONFIG = nm.MinerConfig(n_levels=3, block_size=16, max_steps=30, progress_every=5)


@pytest.fixture(scope="module")
def image():
    return data.camera()[:96, :80]


def _follow(run):
    """The progress after every event (copies), and the events."""
    states, events = [], []
    for event in run:
        events.append(event)
        states.append(run.progress.snapshot())
    return states, events


@pytest.mark.parametrize("tiled", [False, True])
def test_progress_follows_a_fit(image, tmp_path, tiled):
    options = (
        dict(store=tmp_path / "p.miner.zarr", memory_budget="64MB", tile_blocks=2) if tiled else {}
    )
    run = nm.fit_iter(image, CONFIG, device="cpu", **options)
    states, events = _follow(run)
    fractions = [s.fraction for s in states]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] < 1 / 3
    final = states[-1]
    assert final.finished and final.reason == events[-1].reason
    assert final.finished_levels == 3 and final.level == 0
    np.testing.assert_array_equal(final.labels(), active_block_labels(run.model)[0])
    assert final.grid0 == (6, 5) and final.labels().shape == (6, 5)
    points = [p for p in final.history]
    assert points and all(point[2] in (0, 1, 2) for point in points)
    assert [p[0] for p in points] == sorted(p[0] for p in points)
    level0_tiles = [e for e in events if isinstance(e, TileFinished) and e.level == 0]
    during = [
        s for s, e in zip(states, events, strict=True) if isinstance(e, Progress) and e.level == 0
    ]
    assert all(s.n_tiles == level0_tiles[0].n_tiles for s in during)
    text = during[0].describe()
    assert text.startswith("level 0 of 3 · ") and "PSNR" in text and "active" in text
    assert ("tile " in text) == tiled
    assert final.describe().startswith(f"done ({final.outcome}) · PSNR ")


def test_labels_version_changes_only_with_the_masks(image):
    progress = FitProgress.for_fit(CONFIG, nm.core.layout.inspect_input(image))
    progress.update(ScaleStarted(level=2, n_blocks=2, n_active=2))
    version = progress.labels_version
    mask = np.ones((2, 2), bool)
    progress.update(Progress(2, 5, 0.01, 20.0, 4, 0.5, mask, None, (0, 1)))
    assert progress.labels_version == version + 1 and progress.step == 5
    assert progress.level_fraction == pytest.approx(5 / 30)
    assert progress.fraction == pytest.approx(5 / 30 / 3)
    progress.update(Finished(None, 41.0, 3.0, "target"))
    assert progress.labels_version == version + 1 and progress.fraction == 1.0


def test_format_db():
    assert format_db(38.214) == "38.21 dB"
    assert format_db(math.nan) == format_db(None) == "– dB"
