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

Modules: :mod:`~napari_miner.cli.parser` (arguments, ``--region``),
:mod:`~napari_miner.cli.commands` (the sub-commands), :mod:`~napari_miner.cli.report` (progress
bars, the info table, JSON output, the error line).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from ..core.errors import MinerError
from . import commands
from .commands import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .parser import PROG, UsageError, build_parser, join_region_values, parse_region
from .report import report_error

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
    "parse_region",
]


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
    argv = join_region_values(list(sys.argv[1:] if argv is None else argv))
    try:
        args, extra = build_parser().parse_known_args(argv)
        if args.command == "demo":
            return commands.run_demo(extra)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see '{PROG} --help')")
        return commands.HANDLERS[args.command](args)
    except UsageError as error:
        report_error(error)
        return EXIT_USAGE
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): stop quietly
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except (MinerError, OSError) as error:
        report_error(error)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except SystemExit as exit_:  # --help, --version (and the demo's own argument errors)
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_ERROR)
