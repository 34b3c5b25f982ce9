"""The progress model: events in, the state that the CLI, the demo and the widget show out."""

import math

import numpy as np
import pytest
from skimage import data

import napari_miner as nm
from napari_miner.core.block_state import BlockReport, BlockState
from napari_miner.core.events import Finished, Progress, ScaleFinished, ScaleStarted, TileFinished
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


def test_level_rows_give_every_levels_psnr_and_state(image):
    progress = FitProgress.for_fit(CONFIG, nm.core.layout.inspect_input(image))
    assert progress.grids == ((6, 5), (3, 3), (2, 2))
    rows = progress.level_rows()
    assert [r[0] for r in rows] == [2, 1, 0] and all(r[1:] == ("– dB", "waiting") for r in rows)
    progress.update(ScaleStarted(level=2, n_blocks=4, n_active=4))
    progress.update(Progress(2, 5, 0.01, 20.0, 4, 0.5, np.ones((2, 2), bool)))
    assert progress.level_rows()[0] == (2, "20.00 dB", "training · step 5")
    progress.update(ScaleFinished(2, np.zeros((24, 20, 1)), np.eye(2, dtype=bool), 25.5, 1.0, 9))
    progress.update(ScaleStarted(level=1, n_blocks=9, n_active=9))
    assert progress.level_rows() == [
        (2, "25.50 dB", "done · 2/4 MLPs"),
        (1, "– dB", "training · step 0"),
        (0, "– dB", "waiting"),
    ]


def test_block_reports_are_pasted_into_level_wide_reports(image):
    progress = FitProgress.for_fit(CONFIG, nm.core.layout.inspect_input(image))
    state = np.array([[BlockState.WAITING, BlockState.PRUNED]] * 2, np.uint8)
    start = BlockReport(state, np.array([[0.1, 0.0]] * 2, np.float32), np.zeros((2, 2), np.int32))
    progress.update(ScaleStarted(2, 4, 2, start))
    version = progress.blocks_version
    tile = BlockReport(
        np.array([[BlockState.RETIRED]], np.uint8), np.array([[1e-5]], np.float32),
        np.array([[99]], np.int32),
    ).at((1, 0))  # fmt: skip
    progress.update(Progress(2, 5, 0.01, 20.0, 1, 0.5, np.ones((2, 2), bool), blocks=tile))
    assert progress.blocks_version > version
    report = progress.block_report()
    assert report.state.tolist() == [[2, 1], [4, 1]] and report.n_params[1, 0] == 99
    report.state[:] = 0  # a copy: the progress keeps its own
    assert progress.blocks[2].state[1, 0] == BlockState.RETIRED
    assert progress.snapshot().blocks == {}  # (updated in place: not handed to other threads)
    mask = np.array([[True, False], [True, False]])
    progress.update(ScaleFinished(2, np.zeros((24, 20, 1)), mask, 25.5, 1.0, 9))
    assert progress.blocks[2].state.tolist() == [[5, 1], [4, 1]]  # settled: waiting -> trained


@pytest.mark.parametrize("tiled", [False, True])
def test_every_block_of_a_fit_has_a_state(image, tmp_path, tiled):
    options = (
        dict(store=tmp_path / "b.miner.zarr", memory_budget="64MB", tile_blocks=2) if tiled else {}
    )
    run = nm.fit_iter(image, CONFIG, device="cpu", **options)
    origins = set()
    for event in run:
        if isinstance(event, Progress) and event.level == 0:
            origins.add(event.blocks.origin)
            whole = run.progress.blocks[0]
            np.testing.assert_array_equal(whole.state[event.blocks.region()], event.blocks.state)
    assert len(origins) == (9 if tiled else 1)  # a 6x5 grid in tiles of 2x2 blocks: 3x3
    for j, grid in enumerate(run.progress.grids):
        report = run.progress.blocks[j]
        assert report.shape == grid and np.isfinite(report.loss).all()
        assert not np.isin(report.state, [0, BlockState.WAITING, BlockState.TRAINING]).any()
        np.testing.assert_array_equal(report.state == BlockState.PRUNED, ~run.progress.masks[j])
