"""napari-miner: MINER multiscale implicit neural representations for images and volumes in napari."""

from .api import FitRun, MinerConfig, MinerModel, fit, fit_iter, load, resolve_device
from .core.errors import (
    ConfigError,
    DeviceError,
    InvalidInputError,
    MinerError,
    ModelFormatError,
    OutOfMemoryError,
    TrainingError,
)
from .core.events import Finished, Progress, ScaleFinished, ScaleStarted

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DeviceError",
    "Finished",
    "FitRun",
    "InvalidInputError",
    "MinerConfig",
    "MinerError",
    "MinerModel",
    "ModelFormatError",
    "OutOfMemoryError",
    "Progress",
    "ScaleFinished",
    "ScaleStarted",
    "TrainingError",
    "fit",
    "fit_iter",
    "load",
    "resolve_device",
]
