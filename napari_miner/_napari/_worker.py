"""The training loop of the MINER dock widget, run in a napari thread worker.

:func:`fit_messages` is a generator that iterates :func:`napari_miner.fit_iter` in the worker thread
and yields small, throttled :class:`Message` objects that the widget handles on the main thread. It
never touches napari objects: everything it yields is plain data (numpy arrays, dask arrays, the
model). Decoding for the live layers happens here, in the worker thread, never in the GUI thread.

Every exception is caught and yielded as :class:`Failed` (superqt's generator worker swallows
``RuntimeError`` raised in a generator); :class:`FitControl` carries the pause and stop requests
from the main thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Done",
    "Failed",
    "FitControl",
    "LevelData",
    "Status",
    "block_labels",
    "fit_messages",
    "is_volume_layout",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- messages
@dataclass
class Status:
    """Throttled progress of the running level (at most one per ``ui_interval_s``).

    ``history`` holds every ``(elapsed_s, psnr, level)`` point since the previous status, so the
    PSNR plot misses nothing; ``labels`` is the active-blocks overlay, or ``None`` if unchanged.
    ``finished_levels`` counts the levels done; ``level_done`` says whether ``level`` is one of them.
    ``iou`` is the level's IoU of the occupied sets when occupancy is tracked (``config.iou_threshold``),
    as of its last convergence check; ``None`` otherwise (or before the level's first check).
    ``tiles`` is ``(finished, total)`` tiles of the level in an out-of-core fit, else ``None``.
    """

    level: int
    n_levels: int
    step: int
    max_steps: int
    n_active: int
    n_blocks: int
    psnr: float
    elapsed_s: float
    history: list[tuple[float, float, int]] = field(default_factory=list)
    labels: np.ndarray | None = None
    finished_levels: int = 0
    level_done: bool = False
    iou: float | None = None
    tiles: tuple[int, int] | None = None


@dataclass
class LevelData:
    """Data for the live layer of ``level``, in the input's dtype and value range.

    (Occupancy volumes, whose IoU is tracked, come as float32 in the input's value range instead:
    not rounded to a bool or integer dtype, so that their iso surfaces are smooth.)

    ``kind`` is ``"start"`` (the coarser estimate upsampled, when the level starts), ``"preview"``
    (the level as trained so far; throttled, and counted in ``FitControl.frames_in_flight``) or
    ``"final"`` (the finished level, from ``ScaleFinished``, or where a stopped fit left it).

    In an out-of-core fit, ``data`` is a lazy multiscale list (the level and the coarser ones,
    decoded chunk by chunk from the store as napari shows them), refreshed as tiles finish.
    """

    level: int
    data: np.ndarray | list
    kind: str = "preview"


@dataclass
class Done:
    """The fit finished (``stopped=False``) or was stopped; the model is usable either way.

    ``pyramid`` is the lazy multiscale view of a 2D model; a single-channel volume instead comes
    as ``volume``, its level 0 decoded (napari renders only the coarsest level of a multiscale
    layer in 3D). ``iou`` is the final IoU when occupancy is tracked.
    """

    model: Any
    stopped: bool
    reason: str
    psnr: float | None
    elapsed_s: float
    labels: np.ndarray | None = None
    pyramid: list | None = None
    level_data: LevelData | None = None
    volume: np.ndarray | None = None
    iou: float | None = None


@dataclass
class Failed:
    """Training raised; ``error`` is the exception (shown to the user as a notification)."""

    error: BaseException


Message = Status | LevelData | Done | Failed


class FitControl:
    """Thread-safe pause/stop requests from the main thread to :func:`fit_messages`.

    Attributes
    ----------
    frames_in_flight : int
        Live-layer previews yielded but not yet handled by the main thread; the worker skips new
        previews while one is pending, so a slow GUI never accumulates a backlog of big arrays.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self.closing = False
        self.done = threading.Event()
        self.frames_in_flight = 0
        self._lock = threading.Lock()
        self.device: Any = None

    # requests (main thread)
    def stop(self, closing: bool = False) -> None:
        """Ask the worker to stop; ``closing`` skips the final products (viewer is going away)."""
        self.closing = self.closing or closing
        self._stop.set()
        self._resume.set()

    def pause(self) -> None:
        """Ask the worker to pause before the next training event."""
        self._resume.clear()

    def resume(self) -> None:
        """Let a paused worker continue."""
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
        while not self._resume.wait(0.05):
            if self.stop_requested:
                return

    def frame_sent(self) -> None:
        """Count a preview yielded to the main thread."""
        with self._lock:
            self.frames_in_flight += 1

    def frame_handled(self) -> None:
        """Count a preview the main thread has shown."""
        with self._lock:
            self.frames_in_flight = max(0, self.frames_in_flight - 1)


# ------------------------------------------------------------------------------ helpers
def block_labels(masks: dict[int, np.ndarray], grid0_shape: tuple[int, ...]) -> np.ndarray:
    """Level-0 block-grid labels: ``1 + j`` for the finest level ``j`` whose mask covers a cell.

    Same rule as :func:`napari_miner.core.overlay.active_block_labels`, but from block masks (the
    running level's ``Progress.active_mask`` over the finished levels' MLP masks).
    """
    n_levels = max(masks, default=0) + 1
    labels = np.zeros(grid0_shape, dtype=np.min_scalar_type(n_levels))
    for j in sorted(masks, reverse=True):  # finer levels overwrite coarser ones
        mask = masks[j]
        factor = 2**j
        for axis in range(mask.ndim):
            mask = np.repeat(mask, factor, axis=axis)
        labels[mask[tuple(slice(0, s) for s in grid0_shape)]] = j + 1
    return labels


def _display(layout: Any, values: Any, continuous: bool = False) -> np.ndarray:
    """Normalised ``(C, *spatial)`` tensor to a live layer's data.

    The input's dtype, range and axis order; with ``continuous`` (occupancy volumes), float32 in
    the input's value range, not rounded to its dtype: the iso surface at the middle of the range
    is then smooth (like the mesh), and napari renders iso surfaces of float data reliably.
    """
    import torch

    if not continuous:
        return layout.denormalize(values)
    lo, hi = float(layout.value_min), float(layout.value_max)
    array = values.detach().to("cpu", torch.float32).numpy()[0]
    array = array * np.float32(layout.value_scale) + np.float32(lo)
    return np.clip(array, lo, hi).astype(np.float32, copy=False)


def _denormalize(layout: Any, normalized: np.ndarray, continuous: bool = False) -> np.ndarray:
    """``(*spatial, C)`` normalised values to a live layer's data (see :func:`_display`)."""
    import torch

    values = torch.from_numpy(np.ascontiguousarray(np.moveaxis(normalized, -1, 0)))
    return _display(layout, values, continuous)


def _upsampled(
    layout: Any, normalized: np.ndarray, shape: tuple[int, ...], continuous: bool = False
) -> np.ndarray:
    """The coarser level's estimate ×2 upsampled to ``shape``: a level before it trained."""
    import torch

    from napari_miner.core.pyramid import upsample

    values = torch.from_numpy(np.ascontiguousarray(np.moveaxis(normalized, -1, 0)))
    return _display(layout, upsample(values, shape), continuous)


def _decode(model: Any, level: int, device: Any, continuous: bool) -> np.ndarray:
    """A level of ``model`` decoded to a live layer's data (see :func:`_display`)."""
    if not continuous:
        return model.decode(level=level, device=device)
    return _display(model.layout, model.decode_normalized(level, device=device), continuous)


def _lazy_levels(model: Any, level: int) -> list:
    """Level ``level`` of ``model`` and the coarser ones, as a lazy multiscale list (dask)."""
    return model.as_pyramid()[level:]


def is_volume_layout(layout: Any) -> bool:
    """Whether a model's input is a single-channel 3D volume (rendered as a volume, meshable)."""
    return len(layout.spatial_shape) == 3 and layout.n_channels == 1


def _final_products(
    model: Any, level0: np.ndarray | None = None, continuous: bool = False, device: Any = "cpu"
) -> tuple[np.ndarray, list | None, np.ndarray | None]:
    """Overlay labels, lazy pyramid and (volumes) decoded level 0 of a finished or stopped model.

    A single-channel volume gets no pyramid but its level 0 (``level0`` if already decoded): in 3D
    napari renders only the coarsest level of a multiscale layer. Without either (``None``) the
    widget keeps the per-level layers as the result.
    """
    from napari_miner.core.overlay import active_block_labels

    labels = active_block_labels(model)[0]
    if is_volume_layout(model.layout):
        volume = level0 if level0 is not None else _decode(model, 0, device, continuous)
        return labels, None, volume
    try:
        pyramid = model.as_pyramid()
    except Exception:  # the level layers already show the result
        logger.warning("napari-miner: no lazy multiscale view of the model", exc_info=True)
        pyramid = None
    return labels, pyramid, None


def _drop_tracebacks(error: BaseException | None) -> None:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


# ---------------------------------------------------------------------------- generator
def fit_messages(
    data: Any,
    config: Any,
    device: str,
    rgb: bool,
    control: FitControl,
    ui_interval_s: float = 0.2,
    refresh_interval_s: float = 1.0,
    torch_threads: int | None = None,
    store: str | None = None,
    memory_budget: str | None = None,
    channel_axis: int | None = None,
) -> Iterator[Message]:
    """Fit ``data`` and yield throttled messages for the widget (runs in the worker thread).

    Parameters
    ----------
    data : array-like
        The input layer's data (read here, in the worker thread).
    config : MinerConfig
        Training settings.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    rgb : bool
        Whether the input layer is RGB(A).
    control : FitControl
        Pause and stop requests from the main thread.
    ui_interval_s : float
        At most one :class:`Status` per this many seconds.
    refresh_interval_s : float
        At most one live-layer preview per this many seconds (more if decoding is slow: a preview
        never takes more than about a fifth of the training time).
    torch_threads : int, optional
        torch intra-op threads for this thread (OpenMP settings are per thread in torch).
    store : str, optional
        Fit out of core into this model store (resuming an unfinished fit there); the live layers
        are then lazy views of the store.
    memory_budget : str, optional
        Memory budget of an out-of-core fit (e.g. ``"1GiB"``).
    channel_axis : int, optional
        Channel axis of the input (from OME-Zarr metadata).
    """
    import torch

    from napari_miner import fit_iter, resolve_device

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    run = None
    try:
        resolved = resolve_device(device)
        control.device = resolved
        run = fit_iter(
            data,
            config,
            device=resolved,
            rgb=rgb,
            channel_axis=channel_axis,
            store=store,
            memory_budget=memory_budget,
        )
        yield from _messages(run, config, control, ui_interval_s, refresh_interval_s, resolved)
    except Exception as error:  # every failure goes to the user
        logger.error("napari-miner: the fit failed", exc_info=error)
        _drop_tracebacks(error)  # their frames would keep the trainer's (GPU) tensors alive
        yield Failed(error)
    finally:
        if run is not None:
            run.close()
        run = None
        if control.device is not None and control.device.type == "cuda":
            torch.cuda.empty_cache()  # the trainer's tensors are gone with ``run``
        control.done.set()


def _messages(
    run: Any,
    config: Any,
    control: FitControl,
    ui_interval_s: float,
    refresh_interval_s: float,
    device: Any,
) -> Iterator[Message]:
    from napari_miner import Finished, Progress, ScaleFinished, ScaleStarted
    from napari_miner.core.events import TileFinished
    from napari_miner.core.pyramid import level_shapes

    layout = run.model.layout  # a snapshot of the (still empty) model
    # occupancy volumes are shown as float values (smooth iso surfaces), see _display
    continuous = is_volume_layout(layout) and config.iou_threshold is not None
    n_levels = config.n_levels
    shapes = level_shapes(layout.spatial_shape, n_levels)
    grid0 = tuple(-(-s // config.block_size) for s in shapes[0])
    decode_device = device

    masks: dict[int, np.ndarray] = {}
    history: list[tuple[float, float, int]] = []
    previous_estimate: np.ndarray | None = None  # normalised (*spatial, C) of the coarser level
    level, step, n_active, n_blocks, psnr, elapsed = n_levels - 1, 0, 0, 0, float("nan"), 0.0
    finished_levels = 0
    level_done = False
    iou: float | None = None
    level0: np.ndarray | None = None  # level 0's final data (a volume's result)
    last_status = -float("inf")
    last_frame = -float("inf")
    frame_interval = refresh_interval_s
    labels_dirty = False
    last_labels = -float("inf")
    out_of_core = run.out_of_core  # live layers are lazy views of the store
    tiles: tuple[int, int] | None = None

    def status(now: float, force_labels: bool = False) -> Status:
        nonlocal history, labels_dirty, last_labels
        labels = None
        if labels_dirty and (force_labels or now - last_labels >= refresh_interval_s):
            labels = block_labels(masks, grid0)
            labels_dirty, last_labels = False, now
        message = Status(
            level,
            n_levels,
            step,
            config.max_steps,
            n_active,
            n_blocks,
            psnr,
            elapsed,
            history,
            labels,
            finished_levels,
            level_done,
            iou,
            tiles,
        )
        history = []
        return message

    for event in run:
        if control.paused:
            now = time.monotonic()
            yield status(now, force_labels=True)
            last_status = now
            control.wait_while_paused()
        if control.stop_requested:
            break
        now = time.monotonic()
        if isinstance(event, ScaleStarted):
            level, step, n_blocks, n_active = event.level, 0, event.n_blocks, event.n_active
            level_done = False
            iou = None
            tiles = None
            last_frame = -float("inf")  # a preview of the new level soon
            if previous_estimate is not None and not out_of_core:
                data = _upsampled(layout, previous_estimate, shapes[level], continuous)
                yield LevelData(level, data, kind="start")
            yield status(now)
            last_status = now
        elif isinstance(event, Progress):
            level, step, n_active = event.level, event.step, event.n_active
            psnr, elapsed = event.psnr, event.elapsed_s
            if event.iou is not None:
                iou = float(event.iou)
            history.append((event.elapsed_s, event.psnr, event.level))
            masks[event.level] = np.asarray(event.active_mask, dtype=bool)
            labels_dirty = True
            if now - last_status >= ui_interval_s:
                yield status(now)
                last_status = now
            if event.tile is not None:
                tiles = event.tile
            if out_of_core:
                continue  # previews come as tiles finish
            if now - last_frame >= frame_interval and control.frames_in_flight == 0:
                t0 = time.monotonic()
                data = _decode(run.model, event.level, decode_device, continuous)
                spent = time.monotonic() - t0
                # a preview never costs more than ~20% of the training time
                frame_interval = max(refresh_interval_s, 4.0 * spent)
                last_frame = time.monotonic()
                control.frame_sent()
                yield LevelData(event.level, data, kind="preview")
        elif isinstance(event, TileFinished):
            tiles = (event.done, event.n_tiles)
            elapsed = event.elapsed_s
            if now - last_status >= ui_interval_s:
                yield status(now)
                last_status = now
            if now - last_frame >= refresh_interval_s and control.frames_in_flight == 0:
                last_frame = now
                control.frame_sent()
                yield LevelData(event.level, _lazy_levels(run.model, event.level), kind="preview")
        elif isinstance(event, ScaleFinished):
            level, step, psnr, elapsed = event.level, event.steps, event.psnr, event.elapsed_s
            masks[event.level] = np.asarray(event.active_mask, dtype=bool)
            n_active = int(masks[event.level].sum())
            labels_dirty = True
            finished_levels += 1
            level_done = True
            if event.iou is not None:
                iou = float(event.iou)
            history.append((event.elapsed_s, event.psnr, event.level))
            if out_of_core:
                data: Any = _lazy_levels(run.model, event.level)
            else:
                previous_estimate = event.reconstruction
                data = _denormalize(layout, event.reconstruction, continuous)
                if event.level == 0:
                    level0 = data
            yield LevelData(event.level, data, kind="final")
            yield status(now, force_labels=True)
            last_status = now
        elif isinstance(event, Finished):
            labels, pyramid, volume = _final_products(
                event.model, level0, continuous, decode_device
            )
            yield Done(
                event.model,
                stopped=False,
                reason=event.reason,
                psnr=event.psnr,
                elapsed_s=event.elapsed_s,
                labels=labels,
                pyramid=pyramid,
                volume=volume,
                iou=None if event.iou is None else float(event.iou),
            )
            return
    # stopped: what was trained so far stays usable
    run.close()
    if control.closing:
        return
    model = run.model
    if out_of_core:
        preview = LevelData(level, _lazy_levels(model, level), kind="final")
        level0 = None
    else:
        preview = LevelData(level, _decode(model, level, decode_device, continuous), kind="final")
        level0 = preview.data if level == 0 else None
    labels, pyramid, volume = _final_products(model, level0, continuous, decode_device)
    yield Done(
        model,
        stopped=True,
        reason="stopped",
        psnr=None,
        elapsed_s=elapsed,
        labels=labels,
        pyramid=pyramid,
        level_data=preview,
        volume=volume,
        iou=iou if level == 0 else None,
    )
