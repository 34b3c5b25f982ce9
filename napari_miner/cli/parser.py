"""The ``napari-miner`` argument parser, its argument types and ``--region`` parsing."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence

from ..core.errors import ConfigError

__all__ = [
    "PROG",
    "UsageError",
    "build_parser",
    "join_region_values",
    "memory_size",
    "parse_region",
]

PROG = "napari-miner"


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


FLOAT32 = "float32"
"""The ``--weight-bits`` value that keeps float32 weights (``MinerConfig.weight_bits=None``)."""


def _weight_bits(text: str) -> int | str:
    if text.strip().lower() == FLOAT32:
        return FLOAT32
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of bits (4 to 16) or {FLOAT32!r}, got {text!r}"
        ) from None


def memory_size(text: str) -> int:
    """An argparse type: a memory size read by :func:`napari_miner.api.parse_memory_budget`.

    Parameters
    ----------
    text : str
        A size such as ``"512MB"``, ``"2GiB"``, ``"1.5 GB"`` or a number of bytes.

    Returns
    -------
    int
        The size in bytes.

    Raises
    ------
    argparse.ArgumentTypeError
        If the text is empty or not a positive size (a usage error).
    """
    from ..api import parse_memory_budget

    if not text.strip():
        raise argparse.ArgumentTypeError("memory size is empty: use e.g. 512MB or 2GiB")
    try:
        return parse_memory_budget(text.strip())
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r} as a positive memory size: use e.g. 512MB, 2GiB or a number "
            "of bytes"
        ) from None


# ------------------------------------------------------------------------------------ regions
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


def join_region_values(argv: Sequence[str]) -> list[str]:
    """``--region -16:,:24`` -> ``--region=-16:,:24`` (argparse takes a leading ``-`` for an option).

    Parameters
    ----------
    argv : sequence of str
        Command-line arguments.

    Returns
    -------
    list of str
        The same arguments, with a ``--region`` value that starts with ``-`` joined to it.
    """
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


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The ``napari-miner`` argument parser.

    Returns
    -------
    argparse.ArgumentParser
        A parser with the sub-commands ``fit``, ``info``, ``decode``, ``export`` and ``demo``,
        which raises :class:`UsageError` on bad arguments instead of exiting.
    """
    from .. import __version__

    parser = _Parser(
        prog=PROG,
        description="Fit MINER (multiscale implicit neural representations) to images and "
        "volumes, inspect, decode and export the models.",
        epilog="Run 'napari-miner COMMAND --help' for a command's options; see docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    _add_fit(commands)
    _add_info(commands)
    _add_decode(commands)
    _add_export(commands)
    commands.add_parser(
        "demo",
        help="open the napari demo (options as 'python -m napari_miner', see 'demo --help')",
        add_help=False,
        description="Open napari with a sample image and the MINER widget.",
    )
    return parser


def _add_fit(commands: argparse._SubParsersAction) -> None:
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
    settings.add_argument(
        "--weight-bits", type=_weight_bits, metavar="BITS",
        help="quantise the weights to BITS bits (default 7), or 'float32' to keep them exact",
    )  # fmt: skip
    settings.add_argument("--seed", type=_non_negative_int, metavar="N", help="random seed")
    resources = fit.add_argument_group("resources")
    resources.add_argument(
        "--device", default="auto", help="'auto' (default: CUDA if available), 'cpu', 'cuda[:N]'"
    )
    resources.add_argument(
        "--memory-budget", type=memory_size, default=None, metavar="SIZE",
        help="memory the fit may use for its tensors, e.g. 512MB or 2GiB (default 1 GiB)",
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


def _add_info(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser(
        "info",
        help="describe a saved model",
        description="Show a model's shape, levels, parameters, PSNR, settings and provenance.",
    )
    info.add_argument("model", metavar="MODEL", help="a *.miner.zarr store")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_decode(commands: argparse._SubParsersAction) -> None:
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


def _add_export(commands: argparse._SubParsersAction) -> None:
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
