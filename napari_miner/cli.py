"""The ``napari-miner`` command line: fit, inspect, decode and export MINER models.

A thin shell over the public API (:mod:`napari_miner.api`) and the I/O layer::

    napari-miner fit INPUT OUTPUT.miner.zarr [options]   # fit an image/volume, save the model
    napari-miner info MODEL [--json]                     # levels, parameters, PSNR, provenance
    napari-miner decode MODEL OUTPUT [--level L] [--region "y0:y1,x0:x1"]
    napari-miner export MODEL OUTPUT.ome.zarr [--chunk N] [--overwrite]
    napari-miner demo [demo options]                     # the napari demo (python -m napari_miner)

Every error a user can act on (:class:`~napari_miner.core.errors.MinerError`, ``OSError``, a bad
argument) is reported as one line ``napari-miner: error: ...`` on stderr, with exit code 2 for
usage errors and 1 otherwise; an interrupted command exits with 130. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .core.errors import ConfigError, InvalidInputError, MinerError

if TYPE_CHECKING:
    import numpy as np

    from .api import MinerModel
    from .core.config import MinerConfig

__all__ = ["UsageError", "build_parser", "main", "parse_memory", "parse_region", "read_input"]

PROG = "napari-miner"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""Input files read with ``skimage.io.imread`` (any other file but ``.npy`` is tried too)."""

DECODE_SUFFIXES = (".npy", ".png", ".tif", ".tiff", ".zarr")
"""Output formats of ``napari-miner decode``, by file name extension."""


class UsageError(Exception):
    """A command-line argument is invalid (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ------------------------------------------------------------------------------- argument types
def _int_at_least(minimum: int, description: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    return convert


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parse_memory(text: str) -> int:
    """Parse a memory size such as ``"512MB"``, ``"2GiB"``, ``"1.5 GB"`` or ``"1000000"`` to bytes.

    Decimal units (``kB``, ``MB``, ``GB``, ``TB``; also ``k``, ``M``, ``G``, ``T``) are powers of
    1000, binary units (``KiB``, ``MiB``, ``GiB``, ``TiB``) powers of 1024; a bare number is bytes.

    Parameters
    ----------
    text : str
        The size.

    Returns
    -------
    int
        The size in bytes (at least 1).

    Raises
    ------
    argparse.ArgumentTypeError
        If the text is not a positive size.
    """
    from dask.utils import parse_bytes

    if not text.strip():
        raise argparse.ArgumentTypeError("memory size is empty: use e.g. 512MB or 2GiB")
    try:
        value = int(parse_bytes(text.strip()))
    except (ValueError, TypeError, KeyError):
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r} as a memory size: use e.g. 512MB, 2GiB or a number of bytes"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"memory size must be positive, got {text!r}")
    return value


def _parse_bound(text: str, what: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not an integer") from None


def parse_region(text: str, shape: Sequence[int]) -> tuple[slice, ...]:
    """Parse a region such as ``"0:256,128:512"`` into one slice per spatial axis.

    Parameters
    ----------
    text : str
        Comma-separated ``start:stop`` ranges, one per spatial axis in the model's order
        (``y,x`` for images, ``z,y,x`` for volumes), in pixels of the decoded level. A bound may be
        left out (``":256"``, ``"128:"``, ``":"``) and negative bounds count from the end, as in
        Python.
    shape : sequence of int
        Spatial shape of the level the region is for.

    Returns
    -------
    tuple of slice
        Slices with explicit, non-negative ``start`` and ``stop``.

    Raises
    ------
    UsageError
        If the syntax is wrong, the number of ranges does not match ``shape``, or a range is empty
        or outside the level.
    """
    parts = [part.strip() for part in text.split(",")]
    names = (
        ("z", "y", "x")[3 - len(shape) :] if len(shape) <= 3 else tuple(map(str, range(len(shape))))
    )
    example = ",".join(f"{n}0:{n}1" for n in names)
    if len(parts) != len(shape):
        raise UsageError(
            f"--region {text!r} has {len(parts)} range(s) but the model has {len(shape)} spatial "
            f"axes: write it as {example!r}"
        )
    region = []
    for part, side, name in zip(parts, shape, names, strict=True):
        bounds = part.split(":")
        if len(bounds) != 2:
            raise UsageError(
                f"--region {text!r}: {part!r} is not a 'start:stop' range (axis {name}); write "
                f"the region as {example!r}"
            )
        start = _parse_bound(bounds[0], f"--region {text!r}, axis {name}")
        stop = _parse_bound(bounds[1], f"--region {text!r}, axis {name}")
        start = 0 if start is None else (start + side if start < 0 else start)
        stop = side if stop is None else (stop + side if stop < 0 else stop)
        if not 0 <= start < stop <= side:
            raise UsageError(
                f"--region {text!r}: axis {name} range {part!r} is empty or outside the level's "
                f"0:{side}"
            )
        region.append(slice(start, stop))
    return tuple(region)


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The ``napari-miner`` argument parser (raises :class:`UsageError` on bad arguments)."""
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Fit MINER (multiscale implicit neural representations) to images and "
        "volumes, inspect, decode and export the models.",
        epilog="Run 'napari-miner COMMAND --help' for a command's options; see docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    fit = commands.add_parser(
        "fit",
        help="fit a model to an image or volume and save it",
        description="Fit MINER to INPUT and save the model to OUTPUT (a *.miner.zarr store).",
    )
    fit.add_argument(
        "input",
        metavar="INPUT",
        help="zarr array, group (with --component) or OME-Zarr image; or an image file "
        "(.png, .tif, ...) or a .npy file",
    )
    fit.add_argument("output", metavar="OUTPUT", help="model store to write, e.g. fit.miner.zarr")
    fit.add_argument(
        "--component", metavar="PATH", help="path of the array or image inside a zarr group"
    )
    layout = fit.add_argument_group("input layout")
    layout.add_argument(
        "--channel-axis", type=int, default=None, metavar="AXIS",
        help="axis holding channels (default: from OME-Zarr metadata, or RGB(A) detection)",
    )  # fmt: skip
    layout.add_argument(
        "--rgb", action=argparse.BooleanOptionalAction, default=None,
        help="whether a last axis of length 3 or 4 is colour (default: napari's rule)",
    )  # fmt: skip
    settings = fit.add_argument_group("training settings (default: MinerConfig defaults)")
    settings.add_argument(
        "--volume", action="store_true",
        help="3D defaults (MinerConfig.for_volume(): 16^3 blocks, width 20, IoU target)",
    )  # fmt: skip
    settings.add_argument(
        "--no-occupancy", action="store_true",
        help="with --volume: an intensity volume, stopped on --target-psnr instead of IoU",
    )  # fmt: skip
    settings.add_argument("--levels", type=_positive_int, metavar="N", help="pyramid levels")
    settings.add_argument("--block-size", type=_positive_int, metavar="N", help="block side")
    settings.add_argument(
        "--hidden-width", type=_positive_int, metavar="N", help="MLP hidden features"
    )
    settings.add_argument(
        "--max-steps", type=_positive_int, metavar="N", help="training steps per level at most"
    )
    settings.add_argument(
        "--target-psnr", type=_positive_float, metavar="DB", help="stop at this PSNR (dB)"
    )
    settings.add_argument("--seed", type=_non_negative_int, metavar="N", help="random seed")
    resources = fit.add_argument_group("resources")
    resources.add_argument(
        "--device", default="auto", help="'auto' (default: CUDA if available), 'cpu', 'cuda[:N]'"
    )
    resources.add_argument(
        "--memory-budget", type=parse_memory, default=None, metavar="SIZE",
        help="host memory the fit may use, e.g. 512MB or 2GiB",
    )  # fmt: skip
    cluster = resources.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers", type=_positive_int, default=None, metavar="N",
        help="fit tiles on a local dask cluster of N workers",
    )  # fmt: skip
    cluster.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="fit tiles on the dask.distributed scheduler at ADDRESS (tcp://host:8786)",
    )  # fmt: skip
    fit.add_argument(
        "--overwrite", action="store_true",
        help="replace an OUTPUT model that holds another fit (an unfinished fit of the same input "
        "and settings is resumed without this)",
    )  # fmt: skip
    fit.add_argument(
        "--tile-blocks", type=_positive_int, default=None, metavar="N",
        help="largest tile side in blocks (default: as large as --memory-budget allows; smaller "
        "tiles make more, shorter tasks for --workers/--scheduler)",
    )  # fmt: skip
    fit.add_argument(
        "--json", action="store_true", help="print a one-line JSON summary on stdout at the end"
    )

    info = commands.add_parser(
        "info",
        help="describe a saved model",
        description="Show a model's shape, levels, parameters, PSNR, settings and provenance.",
    )
    info.add_argument("model", metavar="MODEL", help="a *.miner.zarr store")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")

    decode = commands.add_parser(
        "decode",
        help="decode a level (or a region of it) to a file",
        description="Decode one level of MODEL, or a region of it, and write it to OUTPUT: "
        ".npy (NumPy), .png/.tif (image file), or .zarr (zarr array, decoded chunk by chunk).",
    )
    decode.add_argument("model", metavar="MODEL", help="a *.miner.zarr store")
    decode.add_argument("output", metavar="OUTPUT", help="output file (.npy, .png, .tif, .zarr)")
    decode.add_argument(
        "--level", type=_non_negative_int, default=0, metavar="L",
        help="pyramid level (0 = full resolution, default)",
    )  # fmt: skip
    decode.add_argument(
        "--region", default=None, metavar="RANGES",
        help="'y0:y1,x0:x1' (volumes 'z0:z1,y0:y1,x0:x1') in pixels of that level",
    )  # fmt: skip
    decode.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")

    export = commands.add_parser(
        "export",
        help="write a model's decoded pyramid as an OME-Zarr image",
        description="Decode every level of MODEL chunk by chunk into an OME-Zarr multiscale "
        "image (channel axis first: c, z, y, x).",
    )
    export.add_argument("model", metavar="MODEL", help="a *.miner.zarr store")
    export.add_argument("output", metavar="OUTPUT", help="OME-Zarr image to write (*.ome.zarr)")
    export.add_argument(
        "--chunk", type=_positive_int, default=1024, metavar="N",
        help="chunk side: NxN tiles for images, cubes of at most N^2 voxels for volumes "
        "(default 1024)",
    )  # fmt: skip
    export.add_argument(
        "--levels", type=_positive_int, default=None, metavar="N",
        help="resolution levels to write (default: down to a smallest side <= 512)",
    )  # fmt: skip
    export.add_argument(
        "--ngff", choices=("0.4", "0.5"), default="0.5",
        help="OME-Zarr version: 0.5 (zarr v3, default) or 0.4 (zarr v2, older readers)",
    )  # fmt: skip
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")

    commands.add_parser(
        "demo",
        help="open the napari demo (options as 'python -m napari_miner', see 'demo --help')",
        add_help=False,
        description="Open napari with a sample image and the MINER widget.",
    )
    return parser


# -------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``napari-miner`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code: 0 on success, 1 for an error, 2 for a usage error, 130 when interrupted.
    """
    argv = _join_region_values(list(sys.argv[1:] if argv is None else argv))
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command == "demo":
            return _cmd_demo(extra)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see '{PROG} --help')")
        handler = {"fit": _cmd_fit, "info": _cmd_info, "decode": _cmd_decode, "export": _cmd_export}
        return handler[args.command](args)
    except UsageError as error:
        _report(error)
        return EXIT_USAGE
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): stop quietly
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except (MinerError, OSError) as error:
        _report(error)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except SystemExit as exit_:  # --help, --version (and the demo's own argument errors)
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_ERROR)


def _join_region_values(argv: list[str]) -> list[str]:
    """``--region -16:,:24`` -> ``--region=-16:,:24`` (argparse takes a leading ``-`` for an option)."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--region" and index + 1 < len(argv) and argv[index + 1].startswith("-"):
            joined.append(f"--region={argv[index + 1]}")
            index += 2
            continue
        joined.append(token)
        index += 1
    return joined


def _report(error: BaseException) -> None:
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _status(message: str) -> None:
    """A human progress line on stderr, only when it is a terminal."""
    if _stderr_is_tty():
        print(message, file=sys.stderr, flush=True)


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and tuples/NumPy scalars as plain JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
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


# --------------------------------------------------------------------------------------- fit
@dataclass(frozen=True)
class InputData:
    """An input read (lazily where possible) for fitting.

    Attributes
    ----------
    data : numpy.ndarray or dask.array.Array
        The image or volume.
    name : str
        Display name (file or store name).
    channel_axis : int or None
        Channel axis from the input's metadata (OME-Zarr), else ``None``.
    """

    data: Any
    name: str
    channel_axis: int | None = None


def read_input(path: str | os.PathLike[str], component: str | None = None) -> InputData:
    """Open a fit input: a zarr store (array, group + component, OME-Zarr), image file or ``.npy``.

    Zarr inputs are opened lazily with :func:`napari_miner.io.source.open_input`; ``.npy`` files
    are memory-mapped and read lazily (a dask array); other files are read with
    ``skimage.io.imread``.

    Parameters
    ----------
    path : str or os.PathLike
        The input.
    component : str, optional
        Array or image inside a zarr group (zarr inputs only).

    Returns
    -------
    InputData
        The data and what is known about its layout.

    Raises
    ------
    InvalidInputError
        If the path does not exist or cannot be read as an image, array or zarr store.
    UsageError
        If ``component`` is given for a file input.
    """
    import numpy as np

    location = Path(os.fspath(path)).expanduser()
    if location.is_file():
        if component is not None:
            raise UsageError(f"--component only applies to zarr inputs, not to the file {location}")
        if location.suffix.lower() == ".npy":
            try:
                data = np.load(location, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as error:
                raise InvalidInputError(
                    f"cannot read {location} as a .npy array: {error}"
                ) from error
            import dask.array as da

            # lazily read chunks (never written to: the memory map is read-only)
            return InputData(da.from_array(data, chunks="auto"), location.name)
        import warnings

        from skimage import io as skio

        try:
            with warnings.catch_warnings():  # imageio's plugin probing warns about old plugins
                warnings.simplefilter("ignore", DeprecationWarning)
                data = skio.imread(str(location))
        except Exception as error:  # imageio/tifffile raise many types for unreadable files
            raise InvalidInputError(
                f"cannot read {location} as an image ({type(error).__name__}: {error}); "
                f"supported: zarr stores, .npy and image files ({', '.join(IMAGE_SUFFIXES)})"
            ) from error
        return InputData(np.asarray(data), location.name)

    from .io.source import open_input

    source = open_input(location, component=component)
    return InputData(source.array, source.name, source.channel_axis)


def _config_from_args(args: argparse.Namespace) -> MinerConfig:
    from .core.config import MinerConfig

    overrides: dict[str, Any] = {}
    for option, field_name in (
        ("levels", "n_levels"),
        ("block_size", "block_size"),
        ("hidden_width", "hidden_width"),
        ("max_steps", "max_steps"),
        ("target_psnr", "target_psnr"),
        ("seed", "seed"),
    ):
        value = getattr(args, option)
        if value is not None:
            overrides[field_name] = value
    if args.no_occupancy and not args.volume:
        raise UsageError("--no-occupancy only applies with --volume")
    if args.volume:
        return MinerConfig.for_volume(occupancy=not args.no_occupancy, **overrides)
    return MinerConfig(**overrides)


def _check_output(path: Path, overwrite: bool, what: str, source: str | None = None) -> Path:
    """Refuse an existing output (unless ``overwrite``) or a missing parent, before any work."""
    from .io.export import OutputExistsError

    path = path.expanduser()
    if source is not None and path.resolve() == Path(source).expanduser().resolve():
        raise UsageError(f"the output {path} is also the input: choose another path")
    if not path.parent.expanduser().resolve().is_dir():
        raise FileNotFoundError(
            f"cannot write the {what} to {path}: directory {path.parent} does not exist"
        )
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{path} already exists: pass --overwrite to replace it")
    return path


class _FitProgress:
    """tqdm bars per level (steps out of ``max_steps``, PSNR and active blocks as postfix)."""

    def __init__(self, enabled: bool, max_steps: int, file: TextIO | None = None) -> None:
        self.enabled = enabled
        self.max_steps = max_steps
        self.file = file
        self._bar: Any = None

    def __call__(self, event: Any) -> None:
        if not self.enabled:
            return
        from .core.events import Finished, Progress, ScaleFinished, ScaleStarted, TileFinished

        if isinstance(event, ScaleStarted):
            self._open(event.level, event.n_active, event.n_blocks)
        elif isinstance(event, TileFinished):
            if self._bar is None:
                self._open(event.level, event.n_mlps, None)
            if self._bar.unit != "tile":  # an out-of-core level: count tiles, not steps
                self._bar.unit = "tile"
                self._bar.reset(total=event.n_tiles)
            self._bar.update(event.done - self._bar.n)
            self._bar.set_postfix({"tile PSNR": f"{event.psnr:.2f} dB"}, refresh=True)
        elif isinstance(event, Progress):
            if self._bar is None:
                self._open(event.level, event.n_active, None)
            if getattr(event, "tile", None) is None:
                self._advance(event.step)
            postfix = {"PSNR": f"{event.psnr:.2f} dB", "active": event.n_active}
            if getattr(event, "iou", None) is not None:
                postfix["IoU"] = f"{event.iou:.4f}"
            tile = getattr(event, "tile", None)
            if tile is not None:
                postfix["tile"] = f"{tile[0]}/{tile[1]}"
            self._bar.set_postfix(postfix, refresh=True)
        elif isinstance(event, ScaleFinished):
            if self._bar is not None and self._bar.unit != "tile":
                self._advance(getattr(event, "steps", self._bar.n))
                self._bar.set_postfix({"PSNR": f"{event.psnr:.2f} dB"}, refresh=True)
            self.close()
        elif isinstance(event, Finished):
            self.close()

    def _open(self, level: int, n_active: int, n_blocks: int | None) -> None:
        from tqdm import tqdm

        self.close()
        blocks = f"{n_active}/{n_blocks}" if n_blocks is not None else f"{n_active}"
        self._bar = tqdm(
            total=self.max_steps,
            desc=f"level {level} ({blocks} blocks)",
            unit="step",
            file=self.file if self.file is not None else sys.stderr,
            leave=True,
            dynamic_ncols=True,
        )

    def _advance(self, step: int) -> None:
        step = min(int(step), self.max_steps)
        if step > self._bar.n:
            self._bar.update(step - self._bar.n)

    def close(self) -> None:
        """Close the open bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@dataclass(frozen=True)
class FitOutcome:
    """What :func:`_run_fit` hands back to the command."""

    model: MinerModel
    psnr: float | None
    iou: float | None
    reason: str
    train_time_s: float


@contextlib.contextmanager
def _dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A dask.distributed client for ``--workers N`` (LocalCluster) or ``--scheduler ADDRESS``.

    Yields ``None`` when neither is given. The client (and a local cluster) are closed on exit.
    """
    if workers is None and scheduler is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as error:
            raise ConfigError(
                f"cannot connect to the dask scheduler at {scheduler}: {error}"
            ) from error
        with client:
            yield client
        return
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _run_fit(
    data: Any,
    config: MinerConfig,
    *,
    output: Path,
    device: str,
    rgb: bool | None,
    channel_axis: int | None,
    memory_budget: int | None,
    tile_blocks: int | None,
    overwrite: bool,
    workers: int | None,
    scheduler: str | None,
    on_event: Any,
) -> FitOutcome:
    """Fit ``data`` out of core into the model store ``output`` (resuming an unfinished fit there).

    Parameters
    ----------
    data : array-like
        NumPy, dask or zarr array.
    config : MinerConfig
        Training settings.
    output : pathlib.Path
        Model store to write, or to resume.
    device : str
        Torch device (``"auto"``, ``"cpu"``, ``"cuda[:N]"``); on a cluster, each worker's.
    rgb, channel_axis
        Input layout, as for :func:`napari_miner.fit_iter`.
    memory_budget : int or None
        Bytes the fit may use for its tensors (sets the tile size).
    tile_blocks : int or None
        Upper limit of a tile's side in blocks.
    overwrite : bool
        Replace a model store that holds another fit.
    workers, scheduler
        ``--workers N`` / ``--scheduler ADDRESS`` (mutually exclusive), see :func:`_dask_client`.
    on_event : callable
        Called with every progress event.

    Returns
    -------
    FitOutcome
        The model and its final statistics.
    """
    from .api import fit_iter
    from .core.events import Finished

    with _dask_client(workers, scheduler) as client:
        run = fit_iter(
            data, config, device=device, rgb=rgb, channel_axis=channel_axis, store=output,
            memory_budget=memory_budget, overwrite=overwrite, tile_blocks=tile_blocks,
            client=client,
        )  # fmt: skip
        finished = None
        try:
            for event in run:
                on_event(event)
                if isinstance(event, Finished):
                    finished = event
        except BaseException:
            run.close()
            raise
    model = run.model
    if finished is None:  # pragma: no cover - fit_iter always ends with Finished
        return FitOutcome(model, None, None, "completed", float("nan"))
    return FitOutcome(
        model,
        finished.psnr,
        getattr(finished, "iou", None),
        finished.reason,
        finished.elapsed_s,
    )


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _cmd_fit(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    config = _config_from_args(args)
    # an existing OUTPUT is resumed when it holds an unfinished fit of the same input and settings
    output = _check_output(Path(args.output), True, "model", source=args.input)
    if os.path.lexists(output) and args.overwrite:  # only a model store is ever replaced;
        from .io.store import check_overwritable  # refuse now, not after hours of training

        check_overwritable(output.resolve())
    source = read_input(args.input, args.component)
    channel_axis = args.channel_axis if args.channel_axis is not None else source.channel_axis
    shape = "x".join(str(s) for s in source.data.shape)
    _status(f"fitting {source.name} ({shape} {source.data.dtype}) -> {output}")
    progress = _FitProgress(_stderr_is_tty(), config.max_steps)
    try:
        outcome = _run_fit(
            source.data,
            config,
            output=output,
            device=args.device,
            rgb=args.rgb,
            channel_axis=channel_axis,
            memory_budget=args.memory_budget,
            tile_blocks=args.tile_blocks,
            overwrite=args.overwrite,
            workers=args.workers,
            scheduler=args.scheduler,
            on_event=progress,
        )
    finally:
        progress.close()
    model = outcome.model
    elapsed = time.perf_counter() - start
    summary = {
        "output": str(output),
        "input": source.name,
        "shape": list(model.shape),
        "dtype": model.dtype.name,
        "levels": model.n_levels,
        "psnr": outcome.psnr,
        "iou": outcome.iou,
        "reason": outcome.reason,
        "parameters": model.n_parameters,
        "train_time_s": outcome.train_time_s,
        "elapsed_s": elapsed,
    }
    if args.json:
        print(json.dumps(_json_safe(summary), allow_nan=False), flush=True)
    else:
        psnr = "n/a" if outcome.psnr is None else f"{outcome.psnr:.2f} dB"
        _status(
            f"saved {output}: PSNR {psnr} ({outcome.reason}), {model.n_parameters:,} parameters, "
            f"{elapsed:.1f} s"
        )
    return EXIT_OK


# -------------------------------------------------------------------------------------- info
def _level_rows(model: MinerModel) -> list[dict[str, Any]]:
    rows = []
    for j, level in enumerate(model.levels):
        stats = dict(getattr(level, "stats", {}) or {})
        n_parameters = getattr(level, "n_parameters", None)
        if n_parameters is None:  # older level objects
            from .core.mlp_bank import count_parameters

            n_parameters = count_parameters(level.weights, level.biases)
        row = {
            "level": j,
            "shape": [int(s) for s in model.level_shape(j)],
            "n_blocks": int(level.grid.n_blocks),
            "n_mlps": int(level.n_mlps),
            "parameters": int(n_parameters),
            "psnr": stats.pop("psnr", None),
            "steps": stats.pop("steps", None),
        }
        if stats.get("iou") is not None:
            row["iou"] = stats.pop("iou")
        stats.pop("n_blocks", None)
        stats.pop("n_mlps", None)
        row["stats"] = stats
        rows.append(row)
    return rows


def _model_info(model: MinerModel, path: str) -> dict[str, Any]:
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
        "levels": _level_rows(model),
        "config": model.config.to_dict(),
        "metadata": dict(model.metadata),
    }


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return format(value, spec)


def _table(rows: list[list[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _format_info(info: dict[str, Any]) -> str:
    kind = (
        "RGB(A) image"
        if info["rgb"]
        else ("volume" if len(info["spatial_shape"]) == 3 else "image")
    )
    if info["channel_axis"] is not None and not info["rgb"]:
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
    if has_iou:
        header.append("IoU")
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
        if has_iou:
            cells.append(_fmt(row.get("iou"), ".4f"))
        rows.append(cells)
    lines += _table(rows, [True, False, True, True, True, True, True, True][: len(header)])
    lines += ["", "config"]
    config = info["config"]
    width = max(len(k) for k in config)
    lines += [f"  {k.ljust(width)}  {_fmt(v)}" for k, v in config.items()]
    metadata = info["metadata"]
    if metadata:
        lines += ["", "provenance"]
        width = max(len(str(k)) for k in metadata)
        for key, value in metadata.items():
            text = f"{value:.2f}" if isinstance(value, float) else str(value)
            lines.append(f"  {str(key).ljust(width)}  {text}")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from .api import load

    model = load(args.model)
    info = _model_info(model, str(args.model))
    if args.json:
        print(json.dumps(_json_safe(info), allow_nan=False), flush=True)
    else:
        print(_format_info(info), flush=True)
    return EXIT_OK


# ------------------------------------------------------------------------------------ decode
def _image_ready(values: np.ndarray, suffix: str, model: MinerModel) -> np.ndarray:
    """Check (and for booleans convert) decoded values for an image file format."""
    import numpy as np

    spatial = len(model.layout.spatial_shape)
    if suffix == ".png":
        if spatial != 2:
            raise UsageError(
                f"{suffix} holds 2D images; this model is a volume: use .tif, .npy or .zarr"
            )
        if values.dtype.kind == "b":
            return values.astype(np.uint8) * 255
        if values.dtype not in (np.uint8, np.uint16):
            raise UsageError(
                f"{suffix} holds 8- or 16-bit unsigned integers; this model decodes {values.dtype}: "
                "use .tif, .npy or .zarr"
            )
    elif values.dtype.kind == "b":
        return values.astype(np.uint8)
    return values


def _cmd_decode(args: argparse.Namespace) -> int:
    from .api import load

    output = Path(args.output)
    suffix = output.suffix.lower()
    if suffix not in DECODE_SUFFIXES:
        raise UsageError(
            f"cannot tell the format of {output}: name it with one of {', '.join(DECODE_SUFFIXES)}"
        )
    output = _check_output(output, args.overwrite, "decoded level", source=args.model)
    model = load(args.model)
    if args.level >= model.n_levels:
        raise UsageError(f"--level {args.level}: the model has levels 0 to {model.n_levels - 1}")
    shape = model.level_shape(args.level)
    region = parse_region(args.region, shape) if args.region is not None else None
    if suffix == ".zarr":
        _decode_to_zarr(model, args.level, region, output, args.overwrite)
    else:
        values = model.decode(args.level, region=region)
        if suffix == ".npy":
            _atomic_file(output, lambda tmp: _save_npy(tmp, values))
        else:
            values = _image_ready(values, suffix, model)
            _atomic_file(output, lambda tmp: _save_image(tmp, values))
    _status(f"wrote {output}")
    return EXIT_OK


def _save_npy(path: Path, values: np.ndarray) -> None:
    import numpy as np

    with open(path, "wb") as handle:
        np.save(handle, values, allow_pickle=False)


def _save_image(path: Path, values: np.ndarray) -> None:
    from skimage import io as skio

    skio.imsave(str(path), values, check_contrast=False)


def _atomic_file(target: Path, write: Any) -> None:
    """Write a file through a temporary sibling and rename it into place."""
    import secrets

    target = target.expanduser()
    temporary = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}{target.suffix}")
    try:
        write(temporary)
        if target.is_dir() and not target.is_symlink():
            from .io.export import _swap_into_place

            _swap_into_place(temporary, target)
        else:
            os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _decode_to_zarr(
    model: MinerModel,
    level: int,
    region: tuple[slice, ...] | None,
    output: Path,
    overwrite: bool,
) -> None:
    """Decode chunk by chunk into a zarr array (written beside ``output``, then renamed)."""
    import secrets
    import shutil

    from .io.export import _swap_into_place

    array = model.as_pyramid()[level]
    if region is not None:
        index: list[slice] = list(region)
        if model.layout.channel_axis is not None:
            index.insert(model.layout.channel_axis, slice(None))
        array = array[tuple(index)]
    target = output.expanduser().parent.resolve() / output.name
    temporary = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
    try:
        with _dask_progress():
            array.to_zarr(str(temporary), overwrite=False)
        _swap_into_place(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextlib.contextmanager
def _dask_progress() -> Iterator[None]:
    """A dask progress bar on stderr while computing, when stderr is a terminal."""
    if not _stderr_is_tty():
        yield
        return
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr):
        yield


# ------------------------------------------------------------------------------------ export
def _cmd_export(args: argparse.Namespace) -> int:
    from .api import load
    from .io.export import export_ome_zarr

    output = _check_output(Path(args.output), args.overwrite, "OME-Zarr image", source=args.model)
    model = load(args.model)
    with _dask_progress():
        export_ome_zarr(
            model,
            output,
            chunk=args.chunk,
            n_levels=args.levels,
            overwrite=args.overwrite,
            ngff_version=args.ngff,
        )
    _status(f"wrote {output}")
    return EXIT_OK


# -------------------------------------------------------------------------------------- demo
def _cmd_demo(argv: list[str]) -> int:
    from .__main__ import main as demo_main

    return int(demo_main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
