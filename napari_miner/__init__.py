"""napari-miner: MINER multiscale implicit neural representations for images and volumes in napari."""

from .api import (
    FitRun,
    MinerConfig,
    MinerModel,
    fit,
    fit_iter,
    load,
    parse_memory_budget,
    resolve_device,
)
from .core.errors import (
    ConfigError,
    DeviceError,
    InvalidInputError,
    MinerError,
    ModelFormatError,
    OutOfMemoryError,
    OutputExistsError,
    StoreLockedError,
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
    "OutputExistsError",
    "Progress",
    "ScaleFinished",
    "ScaleStarted",
    "StoreLockedError",
    "TrainingError",
    "fit",
    "fit_iter",
    "load",
    "parse_memory_budget",
    "resolve_device",
]
