"""Atomic writes and store locks: the one place where files and directories are put in place.

Everything napari-miner writes for a user (model stores, decoded files, OME-Zarr exports) is written
to a hidden temporary sibling of its final path, flushed to disk, and renamed into place, so the final
path holds either the previous complete content or the new one, never a half-written one:

* :func:`atomic_directory` / :func:`atomic_file` — write a directory or a file that way;
* :func:`swap_into_place` — the rename, which moves a previous directory aside first and deletes it
  only once the new one is in place;
* :func:`remove_leftovers` — the temporary and moved-aside siblings that a crash (``kill -9``, power
  loss) can leave behind are removed by the next write of the same path;
* :class:`PathLock` — an exclusive, crash-safe (``flock``) lock on a path, held while a model store is
  written, so that a second writer, or an overwrite of a store in use, gets a clear error.

Sibling names: ``.{name}.tmp-XXXXXXXX`` (being written), ``.{name}.old-XXXXXXXX`` (a previous
version moved aside), ``.{name}.lock`` (the lock file, present only while held).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, OutputExistsError, StoreLockedError

__all__ = [
    "PathLock",
    "atomic_directory",
    "atomic_file",
    "fsync_tree",
    "output_path",
    "new_sibling",
    "remove_leftovers",
    "swap_into_place",
]

_KINDS = ("tmp", "old")


def new_sibling(target: Path, kind: str, suffix: str = "", directory: bool = True) -> Path:
    """Create (a directory) or name (a file) a new hidden sibling ``.{name}.{kind}-XXXXXXXX``."""
    while True:
        candidate = target.parent / f".{target.name}.{kind}-{secrets.token_hex(4)}{suffix}"
        if not directory:
            if not os.path.lexists(candidate):
                return candidate
            continue
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate


def _remove(path: Path) -> None:
    """Delete a file, a link or a directory tree (never following links)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def remove_leftovers(target: Path, kinds: tuple[str, ...] = _KINDS) -> list[Path]:
    """Delete the temporary and moved-aside siblings of ``target`` left by interrupted writes.

    Call it only while no other process writes ``target`` (under its :class:`PathLock`).
    Returns what was removed.
    """
    removed = []
    prefixes = tuple(f".{target.name}.{kind}-" for kind in kinds)
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(prefixes):
            _remove(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries to disk (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk, so that a renamed tree is complete."""
    if root.is_file():
        with open(root, "rb") as handle:
            os.fsync(handle.fileno())
        return
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(Path(directory))


def swap_into_place(temporary: Path, target: Path) -> None:
    """Rename ``temporary`` to ``target``; a previous ``target`` is deleted only once replaced.

    A previous directory is moved aside (``.{name}.old-*``) first; if the rename fails it is put
    back. A previous file or link is replaced in one rename.
    """
    backup = None
    if os.path.lexists(target) and target.is_dir() and not target.is_symlink():
        backup = new_sibling(target, "old")
        backup.rmdir()
        os.replace(target, backup)
    try:
        os.replace(temporary, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    fsync_directory(target.parent)
    if backup is not None:
        _remove(backup)


def _absolute(path: str | PathLike[str]) -> Path:
    """``path`` made absolute with its parent resolved (the last component is kept as it is)."""
    target = Path(os.fspath(path)).expanduser()
    return target.parent.resolve() / target.name


@contextlib.contextmanager
def _atomic(target: str | PathLike[str], directory: bool) -> Iterator[Path]:
    final = _absolute(target)
    remove_leftovers(final, ("tmp",))
    suffix = "" if directory else final.suffix
    temporary = new_sibling(final, "tmp", suffix=suffix, directory=directory)
    try:
        yield temporary
        fsync_tree(temporary)
        swap_into_place(temporary, final)
    except BaseException:
        _remove(temporary)
        raise
    remove_leftovers(final, ("old",))


def atomic_directory(target: str | PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """Write a directory atomically: yields an empty temporary sibling to fill.

    On success the sibling is flushed and swapped into place (:func:`swap_into_place`); on any
    error it is removed and ``target`` is left as it was. Leftovers of earlier interrupted writes
    of ``target`` are removed.
    """
    return _atomic(target, directory=True)


def atomic_file(target: str | PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """Write a file atomically: yields a temporary sibling path (same suffix) to write.

    On success it is flushed and renamed to ``target`` (replacing a previous file, or moving a
    previous directory aside first); on any error it is removed.
    """
    return _atomic(target, directory=False)


def output_path(path: str | PathLike[str], overwrite: bool, what: str) -> Path:
    """The absolute path to write ``what`` to.

    A missing parent directory is refused, and so is an existing output unless ``overwrite``.

    Raises
    ------
    ConfigError
        If the path has no name.
    FileNotFoundError
        If its parent directory does not exist.
    OutputExistsError
        If something exists at the path and ``overwrite`` is not set.
    """
    target = Path(os.fspath(path)).expanduser()
    if target.name in ("", ".", ".."):
        raise ConfigError(f"{os.fspath(path)!r} is not a valid output path: name the {what}")
    target = _absolute(target)
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"cannot write the {what} to {target}: directory {target.parent} does not exist"
        )
    if os.path.lexists(target) and not overwrite:
        raise OutputExistsError(
            f"cannot write the {what} to {target}: it already exists: pass overwrite=True "
            "(--overwrite on the command line) to replace it"
        )
    return target


class PathLock:
    """An exclusive lock on writing ``path`` (a model store), held by one process at a time.

    The lock is an ``flock`` on the hidden sibling file ``.{name}.lock``: the operating system
    releases it when the holding process ends, even by ``kill -9``, so a crashed writer never
    leaves a store locked. The file holds the holder's process id (for the error message) and is
    removed on :meth:`release`.

    Parameters
    ----------
    path : path
        The path to lock (it need not exist).
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = _absolute(path)
        self.lock_path = self.path.parent / f".{self.path.name}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self, what: str = "written") -> PathLock:
        """Take the lock, or raise :class:`StoreLockedError` if another process holds it.

        ``what`` (``"fitted"``, ``"saved"``) is what this process does with the path; it is kept
        in the lock file, so that another process's error can say so.
        """
        if self._fd is not None:
            return self
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder, _, doing = _read_pid(fd).partition(" ")
                os.close(fd)
                who = f" (process {holder})" if holder else ""
                raise StoreLockedError(
                    f"{self.path} is being {doing or 'written'} by another process{who}: wait "
                    "until it has finished, or stop it first"
                )
            # the file may have been removed (released) between open and lock: lock a fresh one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {what}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Let go of the lock (and remove the lock file)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)
        _unlock(fd)
        os.close(fd)

    def is_held_elsewhere(self) -> bool:
        """Whether another process holds the lock right now (without taking it)."""
        if self._fd is not None or not self.lock_path.exists():
            return False
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except OSError:
            return False
        try:
            if not _try_lock(fd):
                return True
            _unlock(fd)
            return False
        finally:
            os.close(fd)

    def __enter__(self) -> PathLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    """What the holder wrote: ``"<pid> <what it does>"``."""
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip()
    except (OSError, AttributeError):
        return ""


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
