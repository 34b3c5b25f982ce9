"""The public Python API: fit a MINER model to an image or volume, and decode it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .core.config import MinerConfig
from .core.errors import DeviceError, MinerError, OutOfMemoryError, TrainingError
from .core.events import Event, Finished
from .core.layout import inspect_input
from .core.model import PyramidModel
from .core.trainer import MinerTrainer

if TYPE_CHECKING:
    import dask.array

__all__ = ["FitRun", "MinerConfig", "MinerModel", "fit", "fit_iter", "load", "resolve_device"]


class MinerModel(PyramidModel):
    """A fitted MINER model: decode any level or region, browse it lazily, save it.

    Level ``j`` is the signal at ``1 / 2**j`` resolution. Obtain one from :func:`fit`,
    :func:`fit_iter` or :func:`load`.
    """

    def save(self, path: str | PathLike[str]) -> None:
        """Write the model to a ``*.miner.zarr`` store, atomically (see :func:`load`)."""
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

    return load_model(path, MinerModel)


def _provenance(data: Any, config: MinerConfig, device: torch.device) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("napari-miner")
    except PackageNotFoundError:  # running from a source tree
        package_version = "unknown"
    digest = hashlib.sha256(np.ascontiguousarray(np.asarray(data)).view(np.uint8).ravel())
    return {
        "package_version": package_version,
        "torch_version": torch.__version__,
        "seed": config.seed,
        "device": str(device),
        "input_sha256": digest.hexdigest(),
    }


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
    model of what has been trained so far, and the final model once the fit finished.
    """

    def __init__(self, trainer: MinerTrainer) -> None:
        self._trainer = trainer
        self._events = self._guarded(trainer.run())
        self._final: MinerModel | None = None

    def __iter__(self) -> FitRun:
        return self

    def __next__(self) -> Event:
        event = next(self._events)
        if isinstance(event, Finished):
            assert isinstance(event.model, MinerModel)
            self._final = event.model
        return event

    def close(self) -> None:
        """Stop training; what was trained so far stays available as :attr:`model`."""
        self._events.close()

    @property
    def model(self) -> MinerModel:
        """The fitted model, or a snapshot of the partial fit if it has not finished."""
        model = self._final if self._final is not None else self._trainer.model()
        assert isinstance(model, MinerModel)
        return model

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
) -> FitRun:
    """Start fitting MINER to ``data`` and return an iterator over progress events.

    Parameters
    ----------
    data : array-like
        2D image ``(Y, X)``, RGB(A) image ``(Y, X, 3|4)`` or volume ``(Z, Y, X)`` as a numpy,
        dask or zarr array; boolean, integer or float.
    config : MinerConfig, optional
        Training settings; the defaults suit 2D images.
    device : str or torch.device
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    rgb : bool, optional
        Whether a last axis of length 3 or 4 holds colour (napari's rule by default).
    channel_axis : int, optional
        Axis holding channels of a multichannel image.

    Returns
    -------
    FitRun
        Iterate it for :class:`ScaleStarted`, :class:`Progress`, :class:`ScaleFinished` and finally
        :class:`Finished` (which carries the model). Closing it cancels the fit.

    Raises
    ------
    InvalidInputError, ConfigError, DeviceError
        For unusable input, settings or device (raised here, before training starts).
    """
    config = MinerConfig() if config is None else config
    if not isinstance(config, MinerConfig):
        raise TypeError(f"config must be a MinerConfig, got {type(config).__name__}")
    array = np.asarray(data)  # a dask or zarr input is read once, here
    layout = inspect_input(array, rgb=rgb, channel_axis=channel_axis)
    resolved = resolve_device(device)
    signal = layout.normalize(array)
    trainer = MinerTrainer(
        signal, layout, config, resolved, _provenance(array, config, resolved), MinerModel
    )
    return FitRun(trainer)


def fit(
    data: Any,
    config: MinerConfig | None = None,
    *,
    device: str | torch.device = "auto",
    rgb: bool | None = None,
    channel_axis: int | None = None,
) -> MinerModel:
    """Fit MINER to ``data`` and return the model (see :func:`fit_iter` for the parameters)."""
    run = fit_iter(data, config, device=device, rgb=rgb, channel_axis=channel_axis)
    for _ in run:
        pass
    return run.model
