"""Exception types raised by napari-miner.

Every error a user can act on is a :class:`MinerError`; the subclasses also derive from the matching
built-in type (``ValueError``, ``RuntimeError``, ...) so generic ``except`` clauses keep working.
"""

from __future__ import annotations


class MinerError(Exception):
    """Base class of every error raised by napari-miner."""


class InvalidInputError(MinerError, ValueError):
    """The input array cannot be fitted (wrong dtype, NaN/Inf, empty, wrong number of dimensions)."""


class ConfigError(MinerError, ValueError):
    """A configuration value is invalid or does not suit the input's shape."""


class DeviceError(MinerError, RuntimeError):
    """The requested compute device is not available."""


class TrainingError(MinerError, RuntimeError):
    """Training failed inside torch; the message says why and what to try."""


class OutOfMemoryError(TrainingError):
    """The device ran out of memory during training."""


class ModelFormatError(MinerError, ValueError):
    """A stored model is unreadable, incomplete or of an unsupported format version."""


class OutputExistsError(MinerError, FileExistsError):
    """An output path exists and overwriting it was not asked for."""


class StoreLockedError(MinerError, RuntimeError):
    """A model store is being written by another process (a fit or a save in progress)."""
