"""What the command line shows: progress bars, the info table, JSON output and the error line.

Human output (progress bars, status lines) goes to stderr, and only when it is a terminal;
machine output (``--json``, the ``info`` table) goes to stdout.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ..fitting.progress import format_db
from .parser import PROG

if TYPE_CHECKING:
    from ..api import MinerModel
    from ..fitting.progress import FitProgress

__all__ = [
    "FitBars",
    "dask_progress",
    "fit_line",
    "format_info",
    "json_safe",
    "model_info",
    "print_json",
    "report_error",
    "status",
    "stderr_is_tty",
]


# --------------------------------------------------------------------------------- terminal
def stderr_is_tty() -> bool:
    """Whether stderr is a terminal (progress bars and status lines are shown only then)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def status(message: str) -> None:
    """Print a human status line on stderr, only when it is a terminal."""
    if stderr_is_tty():
        print(message, file=sys.stderr, flush=True)


def report_error(error: BaseException) -> None:
    """Print ``napari-miner: error: <message>`` as one line on stderr."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def dask_progress() -> Iterator[None]:
    """Show a dask progress bar on stderr while computing, when stderr is a terminal."""
    if not stderr_is_tty():
        yield
        return
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr):
        yield


# ------------------------------------------------------------------------------------- JSON
def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and tuples/NumPy scalars as plain JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return None
    kind = getattr(getattr(value, "dtype", None), "kind", "")
    if kind == "b":
        return bool(value)
    if kind in ("i", "u"):
        return int(value)
    return number


def print_json(value: dict[str, Any]) -> None:
    """Print ``value`` as one line of strict JSON on stdout (non-finite numbers as ``null``)."""
    print(json.dumps(json_safe(value), allow_nan=False), flush=True)


# -------------------------------------------------------------------------------------- fit
class FitBars:
    """One tqdm bar per level, drawn from a :class:`~napari_miner.fitting.progress.FitProgress`.

    A level that is one tile counts steps out of ``max_steps``; a level trained in several tiles
    counts tiles. The postfix shows the PSNR, the active blocks, the IoU (when tracked) and the
    tile being trained.

    Parameters
    ----------
    enabled : bool
        Draw anything at all (the command line draws only when stderr is a terminal).
    file : file-like, optional
        Where the bars go (default ``sys.stderr``).
    """

    def __init__(self, enabled: bool, file: TextIO | None = None) -> None:
        self.enabled = enabled
        self.file = file
        self._bar: Any = None
        self._level: int | None = None

    def update(self, progress: FitProgress) -> None:
        """Show ``progress`` (call it after every event of the fit)."""
        if not self.enabled:
            return
        if progress.finished:
            self.close()
            return
        if self._bar is None or self._level != progress.level:
            if progress.level_done:  # a level that finished while no bar was open
                return
            self._open(progress)
        bar = self._bar
        tiled = progress.n_tiles > 1
        total, done = (
            (progress.n_tiles, progress.tiles_done)
            if tiled
            else (progress.max_steps, progress.step)
        )
        if tiled and bar.unit != "tile":  # a tiled level: count tiles, not steps
            bar.unit = "tile"
            bar.reset(total=total)
        done = min(total, int(done))  # a level may stop before max_steps
        if done > bar.n:  # never back (the step count restarts after a tile)
            bar.update(done - bar.n)
        bar.set_postfix(self._postfix(progress), refresh=True)
        if progress.level_done:
            self.close()

    @staticmethod
    def _postfix(progress: FitProgress) -> dict[str, str]:
        postfix = {"PSNR": format_db(progress.psnr)}
        if not progress.level_done:
            postfix["active"] = f"{progress.n_active}/{progress.n_blocks}"
        if progress.iou is not None and math.isfinite(progress.iou):
            postfix["IoU"] = f"{progress.iou:.4f}"
        if progress.n_tiles > 1 and not progress.level_done:
            postfix["tile"] = f"{progress.tiles_done}/{progress.n_tiles}"
        return postfix

    def _open(self, progress: FitProgress) -> None:
        from tqdm import tqdm

        self.close()
        self._level = progress.level
        self._bar = tqdm(
            total=progress.max_steps,
            desc=f"level {progress.level} ({progress.n_active}/{progress.n_blocks} blocks)",
            unit="step",
            file=self.file if self.file is not None else sys.stderr,
            leave=True,
            dynamic_ncols=True,
        )

    def close(self) -> None:
        """Close the open bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._level = None


def fit_line(output: str, progress: FitProgress, n_parameters: int, elapsed_s: float) -> str:
    """The human line that ends a fit: the PSNR, and whether the target was reached.

    Parameters
    ----------
    output : str
        The model store written.
    progress : FitProgress
        The fit's progress after its last event (it knows the targets).
    n_parameters : int
        Parameters of the model.
    elapsed_s : float
        Time the whole command took.

    Returns
    -------
    str
        E.g. ``saved fit.miner.zarr: PSNR 38.21 dB (max_steps: target 40 dB not reached
        (raise max_steps)), 18,049 parameters, 3.2 s``, or ``... (target reached) ...``.
    """
    quality = f"PSNR {format_db(progress.psnr)}"
    if progress.iou is not None and math.isfinite(progress.iou):
        quality += f", IoU {progress.iou:.4f}"
    return (
        f"saved {output}: {quality} ({progress.outcome}), {n_parameters:,} parameters, "
        f"{elapsed_s:.1f} s"
    )


# ------------------------------------------------------------------------------------- info
def model_info(model: MinerModel, path: str) -> dict[str, Any]:
    """What ``napari-miner info`` shows of ``model``, as a JSON-ready dictionary."""
    layout = model.layout
    return {
        "path": path,
        "shape": list(model.shape),
        "dtype": model.dtype.name,
        "rgb": bool(layout.rgb),
        "channel_axis": layout.channel_axis,
        "spatial_shape": list(layout.spatial_shape),
        "value_range": list(model.value_range),
        "parameters": model.n_parameters,
        "levels": [_level_row(model, j) for j in range(model.n_levels)],
        "config": model.config.to_dict(),
        "metadata": dict(model.metadata),
    }


def _level_row(model: MinerModel, j: int) -> dict[str, Any]:
    level = model.levels[j]
    stats = dict(level.stats)
    row = {
        "level": j,
        "shape": [int(s) for s in model.level_shape(j)],
        "n_blocks": int(level.grid.n_blocks),
        "n_mlps": int(level.n_mlps),
        "parameters": int(level.n_parameters),
        "psnr": stats.pop("psnr", None),
        "steps": stats.pop("steps", None),
    }
    if stats.get("iou") is not None:
        row["iou"] = stats.pop("iou")
    for key in ("n_blocks", "n_mlps"):
        stats.pop(key, None)
    row["stats"] = stats
    return row


def _fmt(value: Any, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _table(rows: list[list[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ).rstrip()
        for row in rows
    ]


def format_info(info: dict[str, Any]) -> str:
    """The ``napari-miner info`` table of :func:`model_info`'s dictionary."""
    kind = "volume" if len(info["spatial_shape"]) == 3 else "image"
    if info["rgb"]:
        kind = "RGB(A) image"
    elif info["channel_axis"] is not None:
        kind += f", channels on axis {info['channel_axis']}"
    low, high = info["value_range"]
    lines = [
        f"model       {info['path']}",
        f"input       {'x'.join(map(str, info['shape']))} {info['dtype']} ({kind}), "
        f"values {_fmt(low, 'g')} .. {_fmt(high, 'g')}",
        f"parameters  {info['parameters']:,}",
        "",
    ]
    has_iou = any("iou" in row for row in info["levels"])
    header = ["level", "shape", "blocks", "MLPs", "parameters", "PSNR (dB)", "steps"]
    header += ["IoU"] if has_iou else []
    rows = [header]
    for row in info["levels"]:
        cells = [
            str(row["level"]),
            "x".join(map(str, row["shape"])),
            str(row["n_blocks"]),
            str(row["n_mlps"]),
            f"{row['parameters']:,}",
            _fmt(row["psnr"], ".2f"),
            _fmt(row["steps"]),
        ]
        cells += [_fmt(row.get("iou"), ".4f")] if has_iou else []
        rows.append(cells)
    lines += _table(rows, [True, False, True, True, True, True, True, True][: len(header)])
    lines += ["", "config"]
    width = max(len(k) for k in info["config"])
    lines += [f"  {k.ljust(width)}  {_fmt(v)}" for k, v in info["config"].items()]
    metadata = info["metadata"]
    if metadata:
        lines += ["", "provenance"]
        width = max(len(str(k)) for k in metadata)
        for key, value in metadata.items():
            text = f"{value:.2f}" if isinstance(value, float) else str(value)
            lines.append(f"  {str(key).ljust(width)}  {text}")
    return "\n".join(lines)
