"""Atomic writes, leftovers of crashed writes, and the store lock (napari_miner.io.atomic)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import napari_miner as nm
from napari_miner.core.errors import StoreLockedError
from napari_miner.io.atomic import PathLock, atomic_directory, atomic_file, remove_leftovers

TINY = nm.MinerConfig(n_levels=2, block_size=8, hidden_width=8, max_steps=10)


@pytest.fixture(scope="module")
def model():
    data = np.random.default_rng(3).random((24, 32), dtype=np.float32)
    return nm.fit(data, TINY, device="cpu")


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------- atomic writes
def test_atomic_directory(tmp_path):
    target = tmp_path / "out.zarr"
    with atomic_directory(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".out.zarr.tmp-")
        assert not target.exists()
        (temporary / "a").write_text("new")
    assert (target / "a").read_text() == "new"
    assert _names(tmp_path) == ["out.zarr"]
    with atomic_directory(target) as temporary:  # replaces a previous directory
        (temporary / "b").write_text("newer")
    assert _names(target) == ["b"] and _names(tmp_path) == ["out.zarr"]


def test_failed_atomic_directory_leaves_nothing_and_keeps_the_previous(tmp_path):
    target = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(target) as temporary:
        (temporary / "a").write_text("half")
        raise RuntimeError("boom")
    assert _names(tmp_path) == []
    target.mkdir()
    (target / "keep").write_text("previous")
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as temporary:
        (temporary / "a").write_text("half")
        raise KeyboardInterrupt
    assert _names(tmp_path) == ["out.zarr"] and (target / "keep").read_text() == "previous"


def test_atomic_file(tmp_path):
    target = tmp_path / "image.tif"
    with atomic_file(target) as temporary:
        assert temporary.suffix == ".tif" and temporary.name.startswith(".image.tif.tmp-")
        temporary.write_bytes(b"one")
    assert target.read_bytes() == b"one"
    with pytest.raises(RuntimeError), atomic_file(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError
    assert target.read_bytes() == b"one" and _names(tmp_path) == ["image.tif"]
    with atomic_file(target) as temporary:
        temporary.write_bytes(b"two")
    assert target.read_bytes() == b"two" and _names(tmp_path) == ["image.tif"]


def test_remove_leftovers(tmp_path):
    target = tmp_path / "m.miner.zarr"
    (tmp_path / ".m.miner.zarr.tmp-0123abcd").mkdir()
    (tmp_path / ".m.miner.zarr.tmp-0123abcd" / "chunk").write_bytes(b"x")
    (tmp_path / ".m.miner.zarr.old-89abcdef").mkdir()
    (tmp_path / ".m.miner.zarr.tmp-ffff0000.tif").write_bytes(b"x")
    (tmp_path / ".other.miner.zarr.tmp-0123abcd").mkdir()  # another path's: kept
    (tmp_path / "m.miner.zarr").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    (tmp_path / ".m.miner.zarr.old-11111111").symlink_to(outside)  # the link, not its target
    removed = remove_leftovers(target, ("tmp",))
    assert sorted(p.name for p in removed) == [
        ".m.miner.zarr.tmp-0123abcd",
        ".m.miner.zarr.tmp-ffff0000.tif",
    ]
    removed = remove_leftovers(target)
    assert sorted(p.name for p in removed) == [
        ".m.miner.zarr.old-11111111",
        ".m.miner.zarr.old-89abcdef",
    ]
    assert _names(tmp_path) == [".other.miner.zarr.tmp-0123abcd", "m.miner.zarr", "outside"]
    assert (outside / "precious").read_text() == "keep"
    assert remove_leftovers(tmp_path / "no" / "such") == []


def test_leftovers_of_a_crashed_save_are_removed_by_the_next_save(model, tmp_path):
    path = tmp_path / "m.miner.zarr"
    temporary = tmp_path / ".m.miner.zarr.tmp-deadbeef"
    temporary.mkdir()
    (temporary / ".zattrs").write_text("{}")
    (tmp_path / ".m.miner.zarr.old-cafebabe").mkdir()
    (tmp_path / ".m.miner.zarr.old-cafebabe" / "x").write_bytes(b"x")
    model.save(path)
    assert _names(tmp_path) == ["m.miner.zarr"]
    nm.load(path)


# ------------------------------------------------------------------------------- the lock
def test_path_lock(tmp_path):
    target = tmp_path / "m.miner.zarr"
    lock = PathLock(target).acquire()
    assert lock.held and lock.lock_path == tmp_path / ".m.miner.zarr.lock"
    assert lock.lock_path.read_text() == f"{os.getpid()} written"
    assert lock.acquire() is lock  # taking it again is a no-op
    other = PathLock(target)
    assert other.is_held_elsewhere()
    with pytest.raises(StoreLockedError, match=f"{target}.*being written.*process {os.getpid()}"):
        other.acquire()
    assert not other.held
    lock.release()
    assert not lock.held and not lock.lock_path.exists()
    lock.release()  # releasing twice is harmless
    assert not other.is_held_elsewhere()
    with other:
        assert other.held
        with pytest.raises(StoreLockedError):
            PathLock(target).acquire("saved")
    assert not other.held and _names(tmp_path) == []


def test_a_lock_held_by_a_killed_process_is_free(tmp_path):
    target = tmp_path / "m.miner.zarr"
    code = textwrap.dedent(f"""
        import sys, time
        from napari_miner.io.atomic import PathLock
        lock = PathLock({str(target)!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=f"process {child.pid}"):
            PathLock(target).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (tmp_path / ".m.miner.zarr.lock").exists()  # left behind, but not locked
    lock = PathLock(target).acquire()  # the OS released the dead process's lock
    lock.release()
    assert _names(tmp_path) == []


def test_saving_into_a_locked_path(model, tmp_path):
    path = tmp_path / "m.miner.zarr"
    model.save(path)
    before = _tree(path)
    with PathLock(path), pytest.raises(StoreLockedError, match="being written"):
        model.save(path)
    assert _tree(path) == before
    assert _names(tmp_path) == ["m.miner.zarr"]
    with PathLock(tmp_path / "new.miner.zarr"), pytest.raises(StoreLockedError):
        model.save(tmp_path / "new.miner.zarr")
    assert _names(tmp_path) == ["m.miner.zarr"]
    nm.load(path)
