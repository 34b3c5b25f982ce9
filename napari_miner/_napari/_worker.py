"""The training side of the MINER dock widget: a generator run in a napari thread worker.

:func:`fit_messages` iterates the :class:`~napari_miner.FitRun` of :func:`napari_miner.fit_iter`
in the worker thread and yields small, throttled, plain-data messages that the widget shows on the
main thread. What it reports comes from the run's progress model
(:class:`~napari_miner.fitting.progress.FitProgress`), never from interpreting events; what it adds is
the data of the live layers, decoded here rather than in the GUI thread: the running level as
trained so far (in memory), or lazy multiscale views of the model store (out of core); and the data
of the debugging views: error maps (per pixel against the level's target when the input is in
memory, computed with each decoded frame; else per block from the errors training reports) and the
state of the shown level's blocks (:class:`BlockView`).


Every exception is yielded as :class:`Failed` (superqt's generator worker swallows ``RuntimeError``
raised in a generator); :class:`FitControl` carries pause and stop requests from the main thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_miner.core.block_state import BlockReport
from napari_miner.core.config import MinerConfig
from napari_miner.core.error_map import LevelTargets, error_percent
from napari_miner.fitting.progress import FitProgress

__all__ = [
    "BlockView",
    "Done",
    "Failed",
    "FitControl",
    "FitRequest",
    "LevelData",
    "Status",
    "fit_messages",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitRequest:
    """What to fit and how: the arguments of :func:`napari_miner.fit_iter`."""

    data: Any
    config: MinerConfig
    device: str = "auto"
    rgb: bool | None = None
    channel_axis: int | None = None
    store: str | None = None
    memory_budget: str | None = None


@dataclass(frozen=True)
class BlockView:
    """The blocks of the level shown.

    ``report`` is a copy of their :class:`BlockReport`; ``error``, when the fit has no per-pixel
    error maps, the per-block error map (% of range) from the report's errors.
    """

    level: int
    report: BlockReport
    error: np.ndarray | None = None


@dataclass
class Status:
    """Progress of the fit, throttled.

    ``progress`` is a :class:`FitProgress` snapshot, ``history`` the PSNR points reported since
    the previous status, ``labels`` the active-blocks overlay and ``blocks`` the blocks of the
    level shown (``None`` when unchanged).
    """

    progress: FitProgress
    history: list[tuple[float, float, int]] = field(default_factory=list)
    labels: np.ndarray | None = None
    blocks: BlockView | None = None


@dataclass
class LevelData:
    """Data of the live layer of ``level``.

    An array like the input (occupancy volumes: float32 in the input's range, for smooth iso
    surfaces), or out of core a lazy multiscale list of the level and the coarser ones.

    ``kind``: ``"start"`` (a level begins), ``"preview"`` (throttled; counted in
    :attr:`FitControl.frames_in_flight` until the main thread handled it) or ``"final"``.
    ``error`` is its per-pixel error map (% of range), when the fit computes them.
    """

    level: int
    data: np.ndarray | list
    kind: str = "preview"
    error: np.ndarray | None = None


@dataclass
class Done:
    """The fit finished (``stopped=False``) or was stopped; the model is usable either way.

    ``pyramid`` is the lazy multiscale view of an image model; a single-channel volume comes as
    ``volume``, its level 0 decoded (napari renders only a multiscale layer's coarsest level in 3D).
    """

    model: Any
    progress: FitProgress
    stopped: bool
    labels: np.ndarray
    pyramid: list | None = None
    volume: np.ndarray | None = None
    level_data: LevelData | None = None
    blocks: BlockView | None = None


@dataclass
class Failed:
    """Training raised ``error`` (shown to the user as a notification)."""

    error: BaseException


Message = Status | LevelData | Done | Failed


class FitControl:
    """Thread-safe pause and stop requests from the main thread to :func:`fit_messages`.

    Attributes
    ----------
    frames_in_flight : int
        Previews yielded but not handled yet; no new preview is decoded while one is pending.
    closing : bool
        Stopped because the widget or viewer closes: no final products.
    done : threading.Event
        Set when the generator ended.
    device : torch.device or None
        The device the fit runs on.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._lock = threading.Lock()
        self.frames_in_flight = 0
        self.closing = False
        self.done = threading.Event()
        self.device: Any = None

    def stop(self, closing: bool = False) -> None:
        """Ask the fit to stop (``closing``: the viewer goes away, skip the final products)."""
        self.closing = self.closing or closing
        self._stop.set()
        self._resume.set()

    def pause(self) -> None:
        """Ask the fit to pause before its next event."""
        self._resume.clear()

    def resume(self) -> None:
        """Let a paused fit continue."""
        self._resume.set()

    @property
    def stop_requested(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        """Whether a pause is requested (and not resumed)."""
        return not self._resume.is_set()

    def wait_while_paused(self) -> None:
        """Block the worker thread while paused (returns at once on stop)."""
        while not self._resume.wait(0.05) and not self.stop_requested:
            pass

    def frame_sent(self) -> None:
        """Count a preview yielded to the main thread."""
        with self._lock:
            self.frames_in_flight += 1

    def frame_handled(self) -> None:
        """Count a preview the main thread has shown."""
        with self._lock:
            self.frames_in_flight = max(0, self.frames_in_flight - 1)


class _Statuses:
    """Throttled :class:`Status` messages from the run's progress.

    ``blocks``: whether they carry :class:`BlockView` s (with per-block error maps when
    ``block_errors``).
    """

    def __init__(
        self,
        progress: FitProgress,
        interval_s: float,
        labels_interval_s: float,
        blocks: bool = True,
        block_errors: bool = True,
    ) -> None:
        self.progress = progress
        self.interval_s, self.labels_interval_s = interval_s, labels_interval_s
        self.last = self.last_labels = self.last_blocks = -float("inf")
        self.sent_points, self.labels_version = 0, 0
        self.blocks, self.block_errors = blocks, block_errors
        self.blocks_version = 0

    def block_view(self) -> BlockView | None:
        """The blocks of the level shown now (``None`` before any, or without block views)."""
        report = self.progress.block_report() if self.blocks else None
        if report is None:
            return None
        error = error_percent(report.loss) if self.block_errors else None
        return BlockView(self.progress.level, report, error)

    def next(self, force: bool = False) -> Status | None:
        """A status if ``force`` or one is due, else None."""
        now = time.monotonic()
        if not force and now - self.last < self.interval_s:
            return None
        progress, labels = self.progress, None
        if progress.labels_version != self.labels_version and (
            force or now - self.last_labels >= self.labels_interval_s
        ):
            labels = progress.labels()
            self.labels_version, self.last_labels = progress.labels_version, now
        blocks = None
        if progress.blocks_version != self.blocks_version and (
            force or now - self.last_blocks >= self.labels_interval_s
        ):
            blocks = self.block_view()
            self.blocks_version, self.last_blocks = progress.blocks_version, now
        history = progress.history[self.sent_points :]
        self.sent_points += len(history)
        self.last = now
        return Status(progress.snapshot(), history, labels, blocks)


class _Frames:
    """The live layers' data: the model as trained so far, decoded at a throttled rate.

    With ``targets`` (in memory), every decoded level comes with its per-pixel error map.
    """

    def __init__(
        self,
        run: Any,
        device: Any,
        control: FitControl,
        interval_s: float,
        targets: LevelTargets | None = None,
    ) -> None:
        self.run, self.device, self.control = run, device, control
        self.targets = targets
        self.lazy = run.store is not None  # out of core: lazy views of the store
        self.continuous = run.layout.is_volume and run.config.iou_threshold is not None
        self.interval_s = self.min_interval_s = interval_s
        self.last = -float("inf")
        self.tiles_shown: tuple[int, int] | None = None
        self.level0: np.ndarray | None = None  # level 0 as decoded when it finished

    def decode(self, model: Any, level: int) -> np.ndarray:
        """Level ``level`` of ``model`` decoded (continuous values for occupancy volumes)."""
        if not self.continuous:
            return model.decode(level=level, device=self.device)
        values = model.decode_normalized(level, device=self.device)
        return model.layout.denormalize(values, continuous=True)

    def level(self, model: Any, level: int) -> np.ndarray | list:
        """Level ``level`` of ``model`` as live-layer data (out of core: level and coarser, lazy)."""
        return model.as_pyramid()[level:] if self.lazy else self.decode(model, level)

    def frame(self, model: Any, level: int, kind: str) -> LevelData:
        """:class:`LevelData` of ``level`` of ``model``, with its error map when there are targets."""
        data = self.level(model, level)
        error = None
        if self.targets is not None and not self.lazy:
            self.targets.release(level)
            error = self.targets.error(level, data)
        return LevelData(level, data, kind, error)

    def boundary(self, progress: FitProgress) -> LevelData | None:
        """The finished level, or the level that starts (its coarser estimate upsampled)."""
        level = progress.level
        self.last = -float("inf")  # a preview of the new level soon
        if progress.level_done:
            frame = self.frame(self.run.model, level, kind="final")
            if level == 0 and not self.lazy:
                self.level0 = frame.data
            return frame
        if self.lazy or level == progress.n_levels - 1:
            return None  # nothing trained yet to show
        return self.frame(self.run.model, level, kind="start")

    def preview(self, progress: FitProgress) -> LevelData | None:
        """The running level as trained so far, when one is due and none is pending."""
        now = time.monotonic()
        if now - self.last < self.interval_s or self.control.frames_in_flight:
            return None
        if self.lazy:  # out of core: when a tile finished
            tiles = (progress.level, progress.tiles_done)
            if tiles == self.tiles_shown or progress.tiles_done == 0:
                return None
            self.tiles_shown = tiles
        frame = self.frame(self.run.model, progress.level, kind="preview")
        spent = time.monotonic() - now
        self.interval_s = max(self.min_interval_s, 4.0 * spent)  # at most ~20% of the time
        self.last = time.monotonic()
        self.control.frame_sent()
        return frame

    def done(self, model: Any, progress: FitProgress, stopped: bool) -> Done:
        """The final products of a finished or stopped fit."""
        from napari_miner.core.overlay import active_block_labels

        shown = None
        if stopped:  # where the fit stopped
            shown = self.frame(model, progress.level, kind="final")
            if progress.level == 0 and not self.lazy:
                self.level0 = shown.data
        labels = active_block_labels(model)[0]
        layout = model.layout
        if layout.is_volume and layout.n_channels == 1:
            volume = self.level0 if self.level0 is not None else self.decode(model, 0)
            return Done(
                model, progress.snapshot(), stopped, labels, volume=volume, level_data=shown
            )
        try:
            pyramid = model.as_pyramid()
        except Exception:  # the level layers already show the result
            logger.warning("napari-miner: no lazy multiscale view of the model", exc_info=True)
            pyramid = None
        return Done(model, progress.snapshot(), stopped, labels, pyramid=pyramid, level_data=shown)


def _messages(
    run: Any,
    control: FitControl,
    ui_interval_s: float,
    refresh_interval_s: float,
    device: Any,
    targets: LevelTargets | None = None,
    debug: bool = True,
) -> Iterator[Message]:
    """The messages of a run: statuses, live-layer data, and at the end :class:`Done`.

    ``debug``: with the debugging views' data (block views; error maps from ``targets``).
    """
    progress = run.progress
    statuses = _Statuses(
        progress, ui_interval_s, refresh_interval_s, blocks=debug, block_errors=targets is None
    )
    frames = _Frames(run, device, control, refresh_interval_s, targets if debug else None)
    phase: tuple[int, bool] | None = None
    for _ in run:
        if control.paused:
            yield statuses.next(force=True)
            control.wait_while_paused()
        if control.stop_requested:
            break
        if progress.finished:
            done = frames.done(run.model, progress, stopped=False)
            done.blocks = statuses.block_view()
            yield done
            return
        if (progress.level, progress.level_done) != phase:  # a level starts or finishes
            phase = (progress.level, progress.level_done)
            data = frames.boundary(progress)
            if data is not None:
                yield data
            yield statuses.next(force=True)
            continue
        for message in (statuses.next(), frames.preview(progress)):
            if message is not None:
                yield message
    run.close()  # stopped: what was trained so far stays usable
    if not control.closing:
        done = frames.done(run.model, progress, stopped=True)
        done.blocks = statuses.block_view()
        yield done


def _drop_tracebacks(error: BaseException | None) -> None:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


def fit_messages(
    request: FitRequest,
    control: FitControl,
    ui_interval_s: float = 0.2,
    refresh_interval_s: float = 1.0,
    torch_threads: int | None = None,
    debug: bool = True,
) -> Iterator[Message]:
    """Fit and yield throttled messages for the widget (runs in the worker thread).

    Parameters
    ----------
    request : FitRequest
        What to fit (the input is read here, in the worker thread) and how.
    control : FitControl
        Pause and stop requests from the main thread.
    ui_interval_s : float
        At most one :class:`Status` per this many seconds (more at level boundaries).
    refresh_interval_s : float
        At most one live-layer preview and one overlay update per this many seconds (previews
        less often if decoding is slow: they never take more than about a fifth of the time).
    torch_threads : int, optional
        torch intra-op threads for this thread (OpenMP settings are per thread in torch).
    debug : bool
        Send the data of the debugging views: the blocks of the level shown and error maps (per
        pixel, with every decoded frame, when the input is an in-memory NumPy array; per block
        otherwise). Training is the same either way.
    """
    import torch

    from napari_miner import fit_iter, resolve_device

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    run = None
    try:
        control.device = device = resolve_device(request.device)
        run = fit_iter(
            request.data, request.config, device=device, rgb=request.rgb,
            channel_axis=request.channel_axis, store=request.store,
            memory_budget=request.memory_budget,
        )  # fmt: skip
        targets = None
        if debug and run.store is None:
            targets = LevelTargets.of(request.data, run.layout)
        yield from _messages(
            run, control, ui_interval_s, refresh_interval_s, device, targets, debug
        )
    except Exception as error:  # every failure goes to the user
        logger.error("napari-miner: the fit failed", exc_info=error)
        _drop_tracebacks(error)  # their frames would keep the fit's (GPU) tensors alive
        yield Failed(error)
    finally:
        if run is not None:
            run.close()
        run = None
        if control.device is not None and control.device.type == "cuda":
            torch.cuda.empty_cache()  # the fit's tensors are gone with ``run``
        control.done.set()
