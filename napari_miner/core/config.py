"""Training configuration."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

REFERENCE_WIDTH = 18
"""MLP width for which ``MinerConfig.learning_rate`` is given."""


@dataclass(frozen=True)
class MinerConfig:
    """Settings of a MINER fit.

    The defaults suit 2D images with values normalised to [0, 1]; :meth:`for_volume` gives defaults for
    3D volumes. All error thresholds are mean squared errors in normalised units (value range = 1).

    Parameters
    ----------
    n_levels : int
        Number of pyramid levels (level 0 = full resolution, each coarser level halves every side).
    block_size : int
        Side of the square (cubic) blocks every level is cut into.
    hidden_width : int
        Features of each hidden layer of the per-block SIREN MLPs.
    hidden_layers : int
        Hidden sine layers after the first sine layer (linear layers = ``hidden_layers + 2``).
    coarsest_width_factor : int
        The coarsest level's MLPs are this many times wider.
    omega_0 : float
        SIREN frequency factor of the sine layers.
    learning_rate : float
        Adam learning rate at the start of each level, for MLPs of width 18; other widths use
        ``learning_rate * sqrt(18 / width)`` (wider sine layers need smaller steps to stay stable).
    lr_decay : float
        Learning rate is multiplied by this every step.
    max_steps : int
        Step limit per level.
    target_psnr : float
        The fit stops once the full-resolution reconstruction reaches this PSNR (dB).
    block_target_mse : float or None
        A block retires once its MSE is below this; ``None`` derives it from ``target_psnr``
        (half the target's MSE, so that retired blocks leave headroom for the rest).
    prune_mse : float or None
        A block whose residual mean square is below this gets no MLP. ``None`` (default) prunes by
        budget instead, see ``prune_budget``.
    prune_budget : float
        Without ``prune_mse``: the lowest-energy blocks of a level get no MLP as long as their
        summed squared residual stays within this fraction of the target's error (the MSE of
        ``target_psnr``) over the whole level.
    pixel_fraction : float
        Fraction of each block's pixels used per optimisation step (1 = all).
    check_every : int
        Steps between exact convergence checks (block retirement, plateau, target).
    plateau_rel_tol : float
        A coarse level ends when its MSE improved by less than this fraction over ``check_every``
        steps (finer levels correct what a coarse level leaves, so coarse levels need not polish).
    final_plateau_rel_tol : float
        The same for level 0, whose error is the final error.
    iou_threshold : float or None
        Track the IoU of the occupied sets (values >= this, in normalised units: 0 = input minimum,
        1 = input maximum) and report it in the events; ``None`` = don't (images).
    target_iou : float or None
        The fit also stops once level 0's IoU reaches this (needs ``iou_threshold``).
    progress_every : int
        Steps between :class:`~napari_miner.core.events.Progress` events.
    seed : int
        Seed of the weight initialisation and pixel sampling.
    """

    n_levels: int = 4
    block_size: int = 32
    hidden_width: int = 18
    hidden_layers: int = 2
    coarsest_width_factor: int = 2
    omega_0: float = 20.0
    learning_rate: float = 1e-2
    lr_decay: float = 0.99
    max_steps: int = 500
    target_psnr: float = 40.0
    block_target_mse: float | None = None
    prune_mse: float | None = None
    prune_budget: float = 0.5
    pixel_fraction: float = 1.0
    check_every: int = 25
    plateau_rel_tol: float = 0.05
    final_plateau_rel_tol: float = 0.01
    iou_threshold: float | None = None
    target_iou: float | None = None
    progress_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        positive_ints = ("n_levels", "block_size", "hidden_width", "coarsest_width_factor")
        positive_ints += ("max_steps", "check_every", "progress_every")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"MinerConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.hidden_layers, int) or self.hidden_layers < 0:
            raise ConfigError(f"MinerConfig.hidden_layers must be >= 0, got {self.hidden_layers!r}")
        if self.block_size < 2:
            raise ConfigError(f"MinerConfig.block_size must be at least 2, got {self.block_size}")
        for name in ("omega_0", "learning_rate", "target_psnr"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"MinerConfig.{name} must be a positive number, got {value!r}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"MinerConfig.lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if not 0 < self.pixel_fraction <= 1:
            raise ConfigError(
                f"MinerConfig.pixel_fraction must be in (0, 1], got {self.pixel_fraction!r}"
            )
        if not 0 <= self.prune_budget <= 1:
            raise ConfigError(
                f"MinerConfig.prune_budget must be in [0, 1], got {self.prune_budget!r}"
            )
        if self.plateau_rel_tol < 0:
            raise ConfigError(
                f"MinerConfig.plateau_rel_tol must be >= 0, got {self.plateau_rel_tol!r}"
            )
        if self.iou_threshold is not None and not 0 < self.iou_threshold < 1:
            raise ConfigError(
                f"MinerConfig.iou_threshold must be in (0, 1), got {self.iou_threshold!r}"
            )
        if self.target_iou is not None:
            if self.iou_threshold is None:
                raise ConfigError("MinerConfig.target_iou needs iou_threshold (e.g. 0.5)")
            if not 0 < self.target_iou <= 1:
                raise ConfigError(
                    f"MinerConfig.target_iou must be in (0, 1], got {self.target_iou!r}"
                )
        for name in ("block_target_mse", "prune_mse"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"MinerConfig.{name} must be None or >= 0, got {value!r}")

    @classmethod
    def for_volume(cls, occupancy: bool = True, **overrides: Any) -> MinerConfig:
        """Defaults for 3D volumes (16³ blocks and width 20, as in the MINER paper).

        Parameters
        ----------
        occupancy : bool
            For binary occupancy volumes (default): track the IoU at threshold 0.5 and stop at
            IoU 0.99. With ``False``, the fit stops on ``target_psnr`` like an image.
        **overrides
            Any other settings.
        """
        defaults: dict[str, Any] = dict(block_size=16, hidden_width=20, max_steps=2000)
        if occupancy:
            defaults.update(iou_threshold=0.5, target_iou=0.99)
        defaults.update(overrides)
        return cls(**defaults)

    def replace(self, **changes: Any) -> MinerConfig:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def retire_mse(self) -> float:
        """MSE below which a block retires (normalised units)."""
        if self.block_target_mse is not None:
            return self.block_target_mse
        return 0.5 * 10.0 ** (-self.target_psnr / 10.0)

    def check_shape(self, spatial_shape: tuple[int, ...]) -> None:
        """Raise :class:`ConfigError` if the settings cannot work for a signal of this spatial shape."""
        smallest = min(spatial_shape)
        if self.block_size > max(spatial_shape):
            raise ConfigError(
                f"block_size={self.block_size} is larger than the input ({'x'.join(map(str, spatial_shape))}): "
                "use a smaller block_size"
            )
        coarsest = math.ceil(smallest / 2 ** (self.n_levels - 1))
        if smallest < 2 ** (self.n_levels - 1) * 2:
            usable = max(1, int(math.log2(max(smallest, 1))))
            raise ConfigError(
                f"n_levels={self.n_levels} is too many for an input whose smallest side is {smallest}: "
                f"the coarsest level would be {coarsest} pixel(s) wide; use n_levels <= {usable}"
            )

    def width_at(self, level: int) -> int:
        """Hidden width of the MLPs at ``level`` (the coarsest level is wider)."""
        if level == self.n_levels - 1:
            return self.hidden_width * self.coarsest_width_factor
        return self.hidden_width

    def learning_rate_at(self, level: int) -> float:
        """Initial learning rate at ``level``, scaled for the level's MLP width."""
        return self.learning_rate * math.sqrt(REFERENCE_WIDTH / self.width_at(level))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary of the settings."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MinerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown MinerConfig settings: {sorted(unknown)}")
        return cls(**values)
