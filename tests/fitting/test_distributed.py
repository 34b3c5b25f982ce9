"""Out-of-core fits whose tiles run on a dask.distributed LocalCluster of 2 worker processes."""

import os
import signal
import threading

import numpy as np
import pytest
from distributed import Client, LocalCluster
from skimage import data

import napari_miner as nm
from napari_miner.core.events import TileFinished
from napari_miner.io.store import ModelStore

CONFIG = nm.MinerConfig(n_levels=2, block_size=16, max_steps=40)
OPTIONS = dict(device="cpu", memory_budget="64MB", tile_blocks=2)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return data.camera()[:160, :144]  # 10 x 9 blocks: 5 x 5 tiles of 2 x 2 blocks at level 0


@pytest.fixture(scope="module")
def single_process(image, tmp_path_factory):
    path = tmp_path_factory.mktemp("single") / "fit.miner.zarr"
    return nm.fit(image, CONFIG, store=path, **OPTIONS)


def _work_tiles(path):
    """The training tiles of level 0 of the fit in ``path``."""
    from napari_miner.core.tiles import tile_indices

    store = ModelStore.open(path)
    return tile_indices(store.grid(0), tuple(store.header.fit["work_tiles"][0]))


@pytest.fixture
def client():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_two_workers_give_the_single_process_result(image, single_process, client, tmp_path):
    path = tmp_path / "spread.miner.zarr"
    run = nm.fit_iter(image, CONFIG, store=path, client=client, **OPTIONS)
    events = list(run)
    tiles = [e for e in events if isinstance(e, TileFinished) and e.level == 0]
    assert sorted(t.index for t in tiles) == _work_tiles(path)
    assert [t.done for t in tiles] == list(range(1, 26))
    np.testing.assert_array_equal(run.model.decode(), single_process.decode())
    assert run.model.metadata["device"] == "dask.distributed workers (cpu)"
    # both workers trained tiles
    assert len(client.run(lambda: 1)) == 2


def test_a_killed_worker_loses_no_tile(image, single_process, client, tmp_path):
    path = tmp_path / "killed.miner.zarr"
    pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    killed = threading.Event()
    run = nm.fit_iter(image, CONFIG, store=path, client=client, **OPTIONS)
    seen = []
    for event in run:
        if isinstance(event, TileFinished) and event.level == 0:
            seen.append(event.index)
            if len(seen) == 3 and not killed.is_set():
                os.kill(victim, signal.SIGKILL)  # mid-level: the worker's tiles are retried
                killed.set()
    assert killed.is_set()
    assert sorted(seen) == _work_tiles(path)  # every tile reported exactly once
    store = ModelStore.open(path)
    assert store.complete and len(store.records(0)) == len(store.tiles(0))
    np.testing.assert_array_equal(run.model.decode(), single_process.decode())


def test_a_distributed_fit_needs_a_store(image, client):
    with pytest.raises(nm.ConfigError, match="store="):
        nm.fit_iter(image, CONFIG, client=client)
