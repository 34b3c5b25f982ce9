"""The public Python API: fit a MINER model to an image or volume, and decode it."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .core.config import MinerConfig
from .core.errors import ConfigError, DeviceError, MinerError, OutOfMemoryError, TrainingError
from .core.events import Event, Finished
from .core.layout import InputLayout, inspect_input
from .core.model import PyramidModel
from .fitting.progress import FitProgress

if TYPE_CHECKING:
    import dask.array

    from .fitting.engine import FitEngine

__all__ = [
    "FitRun",
    "MinerConfig",
    "MinerModel",
    "fit",
    "fit_iter",
    "load",
    "parse_memory_budget",
    "resolve_device",
]


class MinerModel(PyramidModel):
    """A fitted MINER model: decode any level or region, browse it lazily, save it.

    Level ``j`` is the signal at ``1 / 2**j`` resolution. Obtain one from :func:`fit`,
    :func:`fit_iter` or :func:`load`.
    """

    @classmethod
    def of(cls, model: PyramidModel) -> MinerModel:
        """The same model (its levels shared, not copied) with the methods of this class."""
        if isinstance(model, cls):
            return model
        return cls(model.layout, model.config, model.levels, model.metadata)

    def save(self, path: str | PathLike[str]) -> None:
        """Write the model to a ``*.miner.zarr`` store, atomically (see :func:`load`).

        Raises
        ------
        ModelFormatError
            If ``path`` holds something that is not a model store (it is never overwritten).
        StoreLockedError
            If another process is writing ``path``.
        """
        from .io.store import save_model

        save_model(self, path)

    def as_pyramid(self) -> list[dask.array.Array]:
        """Lazy dask arrays of every level (level 0 = full resolution), decoded chunk by chunk.

        Coarser levels, downsampled from the coarsest model level, are appended until the smallest
        side is at most 512 pixels. Chunks hold whole blocks.
        """
        from .io.lazy import dask_pyramid

        return dask_pyramid(self)


def load(path: str | PathLike[str]) -> MinerModel:
    """Open a model saved with :meth:`MinerModel.save`.

    Nothing in the store is executed or unpickled.

    Raises
    ------
    ModelFormatError
        If the store is missing, unreadable, incomplete, corrupted or of a newer format version.
    """
    from .io.store import load_model

    return MinerModel.of(load_model(path))


def _provenance(
    config: MinerConfig, device: torch.device | str, **input_digest: str
) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("napari-miner")
    except PackageNotFoundError:  # running from a source tree
        package_version = "unknown"
    return {
        "package_version": package_version,
        "torch_version": torch.__version__,
        "seed": config.seed,
        "device": str(device),
        **input_digest,
    }


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).ravel()).hexdigest()


DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes an out-of-core fit may use for its tensors when no ``memory_budget`` is given (1 GiB)."""


def parse_memory_budget(budget: int | str | None) -> int:
    """Bytes of a memory budget given as a number or a string such as ``"512MB"`` or ``"2GiB"``.

    Raises
    ------
    ConfigError
        If the budget is not a positive size.
    """
    from dask.utils import parse_bytes

    if budget is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(budget, str) and not budget.strip():
        raise ConfigError("memory_budget is empty: give a size such as '512MB' or '2GiB'")
    try:
        value = parse_bytes(budget) if isinstance(budget, str) else int(budget)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"memory_budget must be a number of bytes or a size such as '512MB' or '2GiB', "
            f"got {budget!r}"
        ) from error
    if isinstance(budget, bool) or value <= 0:
        raise ConfigError(f"memory_budget must be positive, got {budget!r}")
    return value


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``… into an available :class:`torch.device`.

    Raises
    ------
    DeviceError
        If the device is unknown or not available on this machine.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} requested but CUDA is not available on this machine"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(
                f"device {device!r} requested but MPS is not available on this machine"
            )
    elif resolved.type != "cpu":
        raise DeviceError(f"unsupported device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'")
    return resolved


class FitRun:
    """Iterator over the events of a running fit (returned by :func:`fit_iter`).

    Iterate it to train; :meth:`close` (or dropping it) cancels. :attr:`model` is always a valid
    model of what has been trained so far, and the final model once the fit finished;
    :attr:`progress` is the fit's progress as of the last event.

    Attributes
    ----------
    layout : InputLayout
        Layout of the input.
    config : MinerConfig
        Training settings.
    store : pathlib.Path or None
        The model store of an out-of-core fit (its model is read from there).
    progress : FitProgress
        Updated with every event (see :mod:`napari_miner.fitting.progress`).
    """

    def __init__(self, engine: FitEngine, store: str | PathLike[str] | None = None) -> None:
        from pathlib import Path

        self._engine = engine
        self.layout: InputLayout = engine.layout
        self.config: MinerConfig = engine.config
        self.store = None if store is None else Path(store)
        self.progress = FitProgress.for_fit(engine.config, engine.layout)
        self._events = self._guarded(engine.run())
        self._final: MinerModel | None = None

    def __iter__(self) -> FitRun:
        return self

    def __next__(self) -> Event:
        event = next(self._events)
        if isinstance(event, Finished):
            self._final = MinerModel.of(event.model)
            event = dataclasses.replace(event, model=self._final)
        self.progress.update(event)
        return event

    def close(self) -> None:
        """Stop training; what was trained so far stays available as :attr:`model`."""
        self._events.close()

    @property
    def model(self) -> MinerModel:
        """The fitted model, or a snapshot of the partial fit if it has not finished."""
        return self._final if self._final is not None else MinerModel.of(self._engine.model())

    @staticmethod
    def _guarded(events: Iterator[Event]) -> Iterator[Event]:
        try:
            yield from events
        except MinerError:
            raise
        except torch.cuda.OutOfMemoryError as error:
            raise OutOfMemoryError(
                "the GPU ran out of memory while fitting: use a smaller block_size or hidden_width, "
                f"fewer levels, or device='cpu' ({error})"
            ) from error
        except RuntimeError as error:
            raise TrainingError(f"training failed inside torch: {error}") from error


def fit_iter(
    data: Any,
    config: MinerConfig | None = None,
    *,
    device: str | torch.device = "auto",
    rgb: bool | None = None,
    channel_axis: int | None = None,
    store: str | PathLike[str] | None = None,
    memory_budget: int | str | None = None,
    overwrite: bool = False,
    component: str | None = None,
    tile_blocks: int | None = None,
    client: Any = None,
) -> FitRun:
    """Start fitting MINER to ``data`` and return an iterator over progress events.

    Parameters
    ----------
    data : array-like or path
        2D image ``(Y, X)``, RGB(A) image ``(Y, X, 3|4)`` or volume ``(Z, Y, X)`` as a numpy,
        dask or zarr array (boolean, integer or float), or a path: a zarr array, a group with
        ``component``, an OME-Zarr image (level 0 is fitted, its axes are respected), an image
        file (``.png``, ``.tif``, ...) or a ``.npy`` file (see
        :func:`napari_miner.io.source.open_input`).
    config : MinerConfig, optional
        Training settings; the defaults suit 2D images.
    device : str or torch.device
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    rgb : bool, optional
        Whether a last axis of length 3 or 4 holds colour (napari's rule by default).
    channel_axis : int, optional
        Axis holding channels of a multichannel image.
    store : path, optional
        Fit out of core into this model store (``*.miner.zarr``): the input is read region by
        region, levels are trained tile by tile and every finished tile is written to the store at
        once. If the store holds an unfinished fit of the same input with the same settings, the
        fit resumes from its finished tiles. The result is read from the store on demand.
    memory_budget : int or str, optional
        Bytes (or a size such as ``"512MB"``, ``"4GiB"``) an out-of-core fit may use for its
        tensors; it sets the tile size (default 1 GiB). Without ``store``, an input whose
        in-memory fit would exceed the budget is refused.
    overwrite : bool
        Replace a store that holds another fit instead of raising.
    component : str, optional
        Array inside the zarr group at ``data``.
    tile_blocks : int, optional
        Out of core: upper limit of a tile's side in blocks (default: as large as
        ``memory_budget`` allows). Smaller tiles mean more, shorter tasks.
    client : distributed.Client, optional
        Out of core: train the tiles of each level as tasks on this dask.distributed cluster
        (the workers must see ``store`` and the input on a shared file system; each trains on
        ``device``, so ``"auto"`` uses every worker's own GPU when it has one).

    Returns
    -------
    FitRun
        Iterate it for :class:`ScaleStarted`, :class:`Progress`, :class:`ScaleFinished` (and
        :class:`TileFinished` in an out-of-core fit) and finally :class:`Finished` (which carries
        the model). Closing it cancels the fit.

    Raises
    ------
    InvalidInputError, ConfigError, DeviceError, ModelFormatError
        For unusable input, settings, device or store (raised here, before training starts).
    """
    config = MinerConfig() if config is None else config
    if not isinstance(config, MinerConfig):
        raise TypeError(f"config must be a MinerConfig, got {type(config).__name__}")
    resolved = resolve_device(device) if client is None else torch.device("cpu")
    if client is not None and store is None:
        raise ConfigError("a distributed fit (client=...) needs store= (the shared model store)")
    if isinstance(data, str | PathLike):
        from .io.source import open_input

        source = open_input(data, component=component)
        data = source.array
        if channel_axis is None:
            channel_axis = source.channel_axis
    if store is not None:
        worker_device = device if isinstance(device, str) else str(device)
        return _fit_out_of_core(
            data, config, resolved, rgb, channel_axis, store, memory_budget, overwrite,
            tile_blocks, client, worker_device,
        )  # fmt: skip
    if memory_budget is not None:
        _check_fits_in_memory(data, config, parse_memory_budget(memory_budget))
    array = np.asarray(data)  # a dask or zarr input is read once, here
    layout = inspect_input(array, rgb=rgb, channel_axis=channel_axis)
    signal = layout.normalize(array)
    provenance = _provenance(config, resolved, input_sha256=_sha256(array))
    from .fitting import in_memory

    return FitRun(in_memory(signal, layout, config, resolved, provenance))


def _check_fits_in_memory(data: Any, config: MinerConfig, budget: int) -> None:
    """Refuse an in-memory fit whose tensors would exceed ``budget`` (the signal alone, ten times)."""
    shape = tuple(getattr(data, "shape", np.shape(data)))
    need = 10 * 4 * int(np.prod(shape))
    if need > budget:
        raise ConfigError(
            f"fitting an input of shape {shape} in memory needs about {need / 2**30:.1f} GiB, more "
            f"than memory_budget ({budget / 2**30:.1f} GiB): pass store='fit.miner.zarr' to fit "
            "it out of core, tile by tile"
        )


def _fit_out_of_core(
    data: Any,
    config: MinerConfig,
    device: torch.device,
    rgb: bool | None,
    channel_axis: int | None,
    store: str | PathLike[str],
    memory_budget: int | str | None,
    overwrite: bool,
    tile_blocks: int | None,
    client: Any,
    worker_device: str,
) -> FitRun:
    import dask.array as da

    from .core.layout import layout_of
    from .fitting import out_of_core
    from .io.scan import scan_input

    budget = parse_memory_budget(memory_budget)
    array = data if isinstance(data, da.Array) else da.asarray(data)
    # check the layout before the streamed scan reads the input
    layout_of(array.shape, array.dtype, 0.0, 0.0, rgb=rgb, channel_axis=channel_axis)
    stats = scan_input(array)
    layout = layout_of(
        array.shape, array.dtype, stats.value_min, stats.value_max, rgb=rgb,
        channel_axis=channel_axis,
    )  # fmt: skip
    where = device if client is None else f"dask.distributed workers ({worker_device})"
    provenance = _provenance(config, where, input_digest=stats.digest)
    engine = out_of_core(
        array, layout, stats.digest, config, device, store, budget, provenance, overwrite,
        tile_blocks, client, worker_device,
    )  # fmt: skip
    return FitRun(engine, engine.sink.store.path)


def fit(
    data: Any,
    config: MinerConfig | None = None,
    *,
    device: str | torch.device = "auto",
    rgb: bool | None = None,
    channel_axis: int | None = None,
    store: str | PathLike[str] | None = None,
    memory_budget: int | str | None = None,
    overwrite: bool = False,
    component: str | None = None,
    tile_blocks: int | None = None,
    client: Any = None,
) -> MinerModel:
    """Fit MINER to ``data`` and return the model (see :func:`fit_iter` for the parameters)."""
    run = fit_iter(
        data,
        config,
        device=device,
        rgb=rgb,
        channel_axis=channel_axis,
        store=store,
        memory_budget=memory_budget,
        overwrite=overwrite,
        component=component,
        tile_blocks=tile_blocks,
        client=client,
    )
    for _ in run:
        pass
    return run.model
