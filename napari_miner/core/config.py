"""Training configuration."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

REFERENCE_WIDTH = 18
"""MLP width for which ``MinerConfig.learning_rate`` is given."""

MAX_BLOCKS = 1 << 27
"""Most blocks of level 0 (e.g. 370k² pixels in blocks of 32, 8192³ voxels in blocks of 16): the
active-block overlay of a model holds one byte per level-0 block."""


@dataclass(frozen=True)
class FieldRange:
    """The values a numeric setting may take.

    Attributes
    ----------
    low, high : float
        Bounds (``math.inf`` for none).
    open_low, open_high : bool
        Whether the bound itself is excluded.
    integer : bool
        Whether the setting is an integer.
    optional : bool
        Whether ``None`` is allowed too.
    """

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False
    integer: bool = False
    optional: bool = False

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is allowed."""
        if value is None:
            return self.optional
        if self.integer and not _is_int(value):
            return False
        if not _is_number(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        """``"an integer in [1, 16]"``, ``"a number in (0, 1]"``, ``"None or ..."``."""

        def bound(value: float) -> str:
            if math.isinf(value):
                return "inf"
            return f"{int(value)}" if self.integer else f"{value:g}"

        closing = ")" if self.open_high or math.isinf(self.high) else "]"
        interval = f"{'(' if self.open_low else '['}{bound(self.low)}, {bound(self.high)}{closing}"
        text = f"{'an integer' if self.integer else 'a number'} in {interval}"
        return f"None or {text}" if self.optional else text


def _ints(low: int, high: int) -> FieldRange:
    return FieldRange(low, high, integer=True)


FIELD_RANGES: dict[str, FieldRange] = {
    "n_levels": _ints(1, 16),
    "block_size": _ints(2, 1024),
    "hidden_width": _ints(1, 4096),
    "hidden_layers": _ints(0, 64),
    "coarsest_width_factor": _ints(1, 64),
    "omega_0": FieldRange(0.0, math.inf, open_low=True),
    "learning_rate": FieldRange(0.0, 1.0, open_low=True),
    "lr_decay": FieldRange(0.0, 1.0, open_low=True),
    "max_steps": _ints(1, 10**9),
    "target_psnr": FieldRange(0.0, math.inf, open_low=True),
    "block_target_mse": FieldRange(0.0, math.inf, optional=True),
    "prune_mse": FieldRange(0.0, math.inf, optional=True),
    "prune_budget": FieldRange(0.0, 1.0),
    "pixel_fraction": FieldRange(0.0, 1.0, open_low=True),
    "check_every": _ints(1, 10**9),
    "plateau_rel_tol": FieldRange(0.0, math.inf),
    "final_plateau_rel_tol": FieldRange(0.0, math.inf),
    "iou_threshold": FieldRange(0.0, 1.0, open_low=True, open_high=True, optional=True),
    "target_iou": FieldRange(0.0, 1.0, open_low=True, optional=True),
    "progress_every": _ints(1, 10**9),
    "seed": _ints(0, 2**63 - 1),
    "weight_bits": FieldRange(4, 16, integer=True, optional=True),
    "max_splits": _ints(0, 4),
    "split_width": FieldRange(1, 4096, integer=True, optional=True),
    "lite_width": FieldRange(1, 4096, integer=True, optional=True),
    "lite_energy": FieldRange(0.0, math.inf),
    "qat_budget_db": FieldRange(0.0, math.inf),
}
"""The allowed values of every setting of :class:`MinerConfig` (the upper bounds keep a stored
config from asking for absurd allocations)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
    weight_bits : int or None
        The weights are quantised to this many bits (4 to 16; the first layer gets 1 more) when a
        bank finishes training, and stored as integers with one scale per block and layer;
        ``None`` keeps float32 weights.
    max_splits : int
        Capacity growth: when level 0 plateaus above the target, its blocks still above their
        share of the error are split into ``2**d`` children with MLPs of their own, up to this
        many times (each time halving the block side); 0 turns growth off.
    split_width : int or None
        Hidden width of the split blocks' MLPs (``None``: ``hidden_width``); narrow MLPs on
        small blocks add capacity where it is needed at little cost in parameters.
    lite_width : int or None
        Capacity sized to content: blocks whose residual mean square is at most ``lite_energy``
        times the target's MSE get MLPs of this hidden width instead of ``hidden_width`` (``None``:
        every block gets the same MLP).
    lite_energy : float
        See ``lite_width``.
    qat_budget_db : float
        What quantising a bank may cost its level (dB). Level 0 trains this far past its target
        before its weights are quantised, and when rounding every layer at once costs more, the
        layers are quantised one at a time with a short fine-tune of the others in between.
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
    weight_bits: int | None = 7
    max_splits: int = 1
    split_width: int | None = 8
    lite_width: int | None = 8
    lite_energy: float = 8.0
    qat_budget_db: float = 0.1

    def __post_init__(self) -> None:
        for name, allowed in FIELD_RANGES.items():
            value = getattr(self, name)
            if not allowed.contains(value):
                raise ConfigError(f"MinerConfig.{name} must be {allowed.describe()}, got {value!r}")
        if self.target_iou is not None and self.iou_threshold is None:
            raise ConfigError("MinerConfig.target_iou needs iou_threshold (e.g. 0.5)")
        if self.block_size >> self.max_splits < 2:
            raise ConfigError(
                f"MinerConfig.max_splits={self.max_splits} halves blocks of {self.block_size} "
                f"below 2 pixels: use max_splits <= {int(math.log2(self.block_size)) - 1}"
            )
        if self.weight_bits is not None:
            from .quantize import psnr_ceiling

            ceiling = psnr_ceiling(self.weight_bits)
            if self.target_psnr > ceiling:
                raise ConfigError(
                    f"weights of {self.weight_bits} bits reach about {ceiling:g} dB, below "
                    f"target_psnr={self.target_psnr:g}: raise weight_bits (or use None for float32 "
                    "weights), or lower target_psnr"
                )

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
        blocks = math.prod(math.ceil(s / self.block_size) for s in spatial_shape)
        if blocks > MAX_BLOCKS:
            raise ConfigError(
                f"an input of {'x'.join(map(str, spatial_shape))} has {blocks} blocks of "
                f"{self.block_size} at level 0, more than napari-miner handles ({MAX_BLOCKS}): use "
                "a larger block_size"
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
