"""The thread workers of the MINER dock widget, seen from the main thread.

* :class:`FitWorker` — one fit: a napari thread worker around
  :func:`~napari_miner._napari._worker.fit_messages`; pause, resume, stop; its messages handed to
  the widget on the main thread, one at a time and in order; errors (yielded as ``Failed``, or
  escaping the generator) handed over as ``Failed`` for a notification; :meth:`FitWorker.shutdown`
  stops it and waits for its thread (the widget or viewer closes, or the application quits).
* :class:`MeshWorker` — *Add mesh*: marching cubes of a fitted volume in a thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from ._worker import Failed, FitControl, FitRequest, LevelData, Message, fit_messages

__all__ = ["FitWorker", "MeshWorker", "worker_threads"]

logger = logging.getLogger(__name__)

_FINISHED = object()
"""Inbox marker: the worker thread finished."""

_RUNNING: weakref.WeakSet[FitWorker] = weakref.WeakSet()


def _shutdown_all() -> None:
    """Stop every running fit (``QApplication.aboutToQuit``)."""
    for worker in list(_RUNNING):
        worker.shutdown()


def _hook_quit() -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None and not getattr(app, "_napari_miner_quit_hook", False):
        app.aboutToQuit.connect(_shutdown_all)
        app._napari_miner_quit_hook = True


def worker_threads(main_threads: int) -> int:
    """Threads for torch in the training thread: as many as the main thread, one core left to the GUI.

    (OpenMP thread counts are per thread in torch, so the worker sets its own; with every core busy
    training, the GUI's rendering competes with OpenMP's spinning threads and both slow down.)
    """
    return max(1, min(main_threads, (os.cpu_count() or 2) - 1))


class FitWorker:
    """One fit in a napari thread worker.

    Parameters
    ----------
    request : FitRequest
        What to fit and how.
    on_message : callable
        Called on the main thread with every message, one at a time, in order.
    on_finished : callable
        Called once the worker ended (after its last message) or was shut down.
    ui_interval_s, refresh_interval_s : float
        Throttling of the status messages and of the live-layer previews.

    Attributes
    ----------
    control : FitControl
        Pause and stop requests to the worker thread.
    worker : napari.qt.threading.GeneratorWorker or None
        The thread worker (``None`` once it finished).
    """

    def __init__(
        self,
        request: FitRequest,
        on_message: Callable[[Message], None],
        on_finished: Callable[[], None],
        ui_interval_s: float = 0.2,
        refresh_interval_s: float = 1.0,
    ) -> None:
        import torch
        from napari.qt.threading import create_worker

        self.control = FitControl()
        self._on_message, self._on_finished = on_message, on_finished
        self._inbox: deque[Any] = deque()
        self._handling = False
        self.worker: Any = create_worker(
            fit_messages, request, self.control, ui_interval_s=ui_interval_s,
            refresh_interval_s=refresh_interval_s,
            torch_threads=worker_threads(torch.get_num_threads()), _start_thread=False,
        )  # fmt: skip
        self._slots = [
            (self.worker.yielded, self._receive),
            (self.worker.errored, self._on_error),
            (self.worker.finished, self._on_worker_finished),
        ]
        for signal, slot in self._slots:
            signal.connect(slot)

    @property
    def running(self) -> bool:
        """Whether the worker has not finished (including paused and stopping)."""
        return self.worker is not None

    @property
    def paused(self) -> bool:
        """Whether a pause is requested."""
        return self.control.paused

    def start(self) -> None:
        """Start the worker thread."""
        _RUNNING.add(self)
        _hook_quit()
        self.worker.start()

    def pause(self) -> None:
        """Pause before the next training event."""
        if not self.control.stop_requested:
            self.control.pause()

    def resume(self) -> None:
        """Resume a paused fit."""
        self.control.resume()

    def stop(self) -> None:
        """Stop; the worker still sends the partial model (``Done(stopped=True)``)."""
        self.control.stop()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop without final products and wait for the thread to finish (closing)."""
        worker = self.worker
        if worker is None:
            return
        self.control.stop(closing=True)
        deadline = time.monotonic() + timeout_s
        if not self.control.done.wait(timeout_s):
            logger.warning("napari-miner: the fit did not stop within %.0f s", timeout_s)
        while worker.is_running and time.monotonic() < deadline:
            time.sleep(0.005)  # run() is emitting its last signals
        self._release()

    # ------------------------------------------------------------- messages
    def _receive(self, message: Any) -> None:
        """Queue a message and handle the queue in order.

        napari may process pending events while a layer is added or the progress bar redraws;
        the queue keeps a message from being handled inside the handling of the previous one.
        """
        self._inbox.append(message)
        if self._handling:
            return
        self._handling = True
        try:
            while self._inbox:
                self._handle(self._inbox.popleft())
        finally:
            self._handling = False

    def _handle(self, message: Any) -> None:
        if message is _FINISHED:
            self._release()
            return
        try:
            self._on_message(message)
        except Exception:  # a bug there must not leave the widget stuck "running"
            logger.exception("napari-miner: error while handling %r", message)
        finally:
            if isinstance(message, LevelData) and message.kind == "preview":
                self.control.frame_handled()

    def _on_error(self, error: BaseException) -> None:
        # only reached if something escaped fit_messages (it yields its own errors)
        self._receive(Failed(error))

    def _on_worker_finished(self) -> None:
        # queued behind the worker's last messages, so that they are all handled first
        self._receive(_FINISHED)

    def _release(self) -> None:
        worker, self.worker = self.worker, None
        if worker is None:
            return
        _RUNNING.discard(self)
        for signal, slot in self._slots:
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):  # already disconnected
                pass
        device = self.control.device
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        try:
            self._on_finished()
        except RuntimeError:  # its widget was deleted already (the application quits)
            logger.debug("napari-miner: fit finished after its widget was deleted")


class MeshWorker:
    """Marching cubes of a fitted volume's level 0 in a thread worker.

    Parameters
    ----------
    model : MinerModel
        A fitted single-channel volume.
    threshold : float
        Iso level in normalised units.
    on_mesh, on_error : callable
        Called on the main thread with the :class:`~napari_miner.io.mesh.Mesh`, or the error.
    on_finished : callable
        Called on the main thread once the thread ended.
    """

    def __init__(
        self,
        model: Any,
        threshold: float,
        on_mesh: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        on_finished: Callable[[], None],
    ) -> None:
        from napari.qt.threading import create_worker

        self.done = threading.Event()
        done = self.done

        def extract(model: Any) -> Any:
            from napari_miner.io.mesh import extract_mesh

            try:  # errors are returned: napari would relay a raised one as an unhandled error
                return extract_mesh(model, level=0, threshold=threshold)
            except Exception as error:
                return Failed(error)
            finally:
                done.set()

        self._on_mesh, self._on_error = on_mesh, on_error
        self._worker = create_worker(extract, model, _start_thread=False)
        self._worker.returned.connect(self._returned)
        self._worker.errored.connect(on_error)
        self._worker.finished.connect(on_finished)

    def start(self) -> None:
        """Start the thread."""
        self._worker.start()

    def _returned(self, result: Any) -> None:
        if isinstance(result, Failed):
            self._on_error(result.error)
        else:
            self._on_mesh(result)

    def wait(self, timeout_s: float = 30.0) -> None:
        """Wait for the extraction to end (its result is then dropped by the caller)."""
        self.done.wait(timeout_s)
