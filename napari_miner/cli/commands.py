"""The sub-commands: ``fit``, ``info``, ``decode``, ``export`` and ``demo``.

Each handler takes the parsed arguments, calls the public API (:mod:`napari_miner.api`) and the
I/O layer's public functions, and returns the exit code; errors propagate to
:func:`napari_miner.cli.main`, which reports them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError
from . import report
from .parser import FLOAT32, UsageError, parse_region

if TYPE_CHECKING:
    from ..core.config import MinerConfig

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "HANDLERS",
    "config_from_args",
    "run_demo",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------------- helpers
def config_from_args(args: argparse.Namespace) -> MinerConfig:
    """The training settings of ``napari-miner fit``: ``MinerConfig`` defaults and the options.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``fit`` arguments.

    Returns
    -------
    MinerConfig
        ``MinerConfig.for_volume()`` with ``--volume``, else ``MinerConfig()``, with the options
        given on the command line.

    Raises
    ------
    UsageError
        If ``--no-occupancy`` is given without ``--volume``.
    ConfigError
        If the settings are inconsistent.
    """
    from ..api import MinerConfig

    options = {
        "levels": "n_levels",
        "block_size": "block_size",
        "hidden_width": "hidden_width",
        "max_steps": "max_steps",
        "target_psnr": "target_psnr",
        "seed": "seed",
        "weight_bits": "weight_bits",
    }
    overrides = {
        field: getattr(args, option)
        for option, field in options.items()
        if getattr(args, option) is not None
    }
    if overrides.get("weight_bits") == FLOAT32:
        overrides["weight_bits"] = None
    if args.no_occupancy and not args.volume:
        raise UsageError("--no-occupancy only applies with --volume")
    if args.volume:
        return MinerConfig.for_volume(occupancy=not args.no_occupancy, **overrides)
    return MinerConfig(**overrides)


def _check_output(path: Path, overwrite: bool, what: str, source: str) -> Path:
    """Refuse an existing output (unless ``overwrite``), the input itself or a missing parent."""
    from ..core.errors import OutputExistsError

    path = path.expanduser()
    if path.resolve() == Path(source).expanduser().resolve():
        raise UsageError(f"the output {path} is also the input: choose another path")
    if not path.parent.resolve().is_dir():
        raise FileNotFoundError(
            f"cannot write the {what} to {path}: directory {path.parent} does not exist"
        )
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{path} already exists: pass --overwrite to replace it")
    return path


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


# -------------------------------------------------------------------------------------- fit
def _cmd_fit(args: argparse.Namespace) -> int:
    """``napari-miner fit``: fit INPUT out of core into the model store OUTPUT (resumable)."""
    from ..api import fit_iter
    from ..io.atomic import PathLock
    from ..io.source import open_input
    from ..io.store import check_overwritable

    start = time.perf_counter()
    config = config_from_args(args)
    # refuse now, not after reading the input: an existing OUTPUT is resumed when it holds an
    # unfinished fit of the same input and settings; only a model store is ever replaced
    output = _check_output(Path(args.output), True, "model", source=args.input)
    if os.path.lexists(output) and args.overwrite:
        check_overwritable(output.resolve())
    PathLock(output).acquire("fitted").release()  # StoreLockedError while another fit writes it
    source = open_input(args.input, component=args.component)
    channel_axis = args.channel_axis if args.channel_axis is not None else source.channel_axis
    shape = "x".join(str(s) for s in source.array.shape)
    report.status(f"fitting {source.name} ({shape} {source.array.dtype}) -> {output}")
    bars = report.FitBars(report.stderr_is_tty())
    with _dask_client(args.workers, args.scheduler) as client:
        run = fit_iter(
            source.array, config, device=args.device, rgb=args.rgb, channel_axis=channel_axis,
            store=output, memory_budget=args.memory_budget, overwrite=args.overwrite,
            tile_blocks=args.tile_blocks, client=client,
        )  # fmt: skip
        try:
            for _ in run:
                bars.update(run.progress)
        finally:
            bars.close()
            run.close()
        model = run.model
    progress = run.progress
    elapsed = time.perf_counter() - start
    if args.json:
        report.print_json(
            {
                "output": str(output),
                "input": source.name,
                "shape": list(model.shape),
                "dtype": model.dtype.name,
                "levels": model.n_levels,
                "psnr": progress.psnr,
                "iou": progress.iou,
                "reason": progress.reason,
                "parameters": model.n_parameters,
                "train_time_s": progress.elapsed_s,
                "elapsed_s": elapsed,
            }
        )
    else:
        report.status(report.fit_line(str(output), progress, model.n_parameters, elapsed))
    return EXIT_OK


# ------------------------------------------------------------------------------------- info
def _cmd_info(args: argparse.Namespace) -> int:
    """``napari-miner info``: describe a saved model (table, or JSON with ``--json``)."""
    from ..api import load

    info = report.model_info(load(args.model), str(args.model))
    if args.json:
        report.print_json(info)
    else:
        print(report.format_info(info), flush=True)
    return EXIT_OK


# ----------------------------------------------------------------------------------- decode
def _cmd_decode(args: argparse.Namespace) -> int:
    """``napari-miner decode``: write a level (or a region of it) with :func:`write_decoded`."""
    from ..api import load
    from ..io.decoded import check_decoded_path, write_decoded

    try:
        check_decoded_path(args.output)
    except ConfigError as error:
        raise UsageError(str(error)) from None
    output = _check_output(Path(args.output), args.overwrite, "decoded level", source=args.model)
    model = load(args.model)
    if args.level >= model.n_levels:
        raise UsageError(f"--level {args.level}: the model has levels 0 to {model.n_levels - 1}")
    region = None
    if args.region is not None:
        region = parse_region(args.region, model.level_shape(args.level))
    try:
        with report.dask_progress():
            write_decoded(model, output, args.level, region, overwrite=args.overwrite)
    except ConfigError as error:  # the format cannot hold these values (e.g. a volume as .png)
        raise UsageError(str(error)) from None
    report.status(f"wrote {output}")
    return EXIT_OK


# ----------------------------------------------------------------------------------- export
def _cmd_export(args: argparse.Namespace) -> int:
    """``napari-miner export``: write the decoded pyramid as an OME-Zarr image."""
    from ..api import load
    from ..io.export import export_ome_zarr

    output = _check_output(Path(args.output), args.overwrite, "OME-Zarr image", source=args.model)
    model = load(args.model)
    with report.dask_progress():
        export_ome_zarr(
            model,
            output,
            chunk=args.chunk,
            n_levels=args.levels,
            overwrite=args.overwrite,
            ngff_version=args.ngff,
        )
    report.status(f"wrote {output}")
    return EXIT_OK


# ------------------------------------------------------------------------------------- demo
def run_demo(argv: list[str]) -> int:
    """Run ``python -m napari_miner`` (the napari demo) with ``argv``; return its exit code."""
    from ..__main__ import main as demo_main

    return int(demo_main(argv) or 0)


HANDLERS = {"fit": _cmd_fit, "info": _cmd_info, "decode": _cmd_decode, "export": _cmd_export}
"""The handler of each sub-command but ``demo``: parsed arguments in, exit code out."""
