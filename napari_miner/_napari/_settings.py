"""The settings form of the MINER dock widget, generated from :class:`~napari_miner.MinerConfig`.

One magicgui widget per dataclass field (:func:`magicgui.widgets.create_widget`), its tooltip taken
from the class's numpy docstring, its bounds from the ranges :mod:`napari_miner.core.config` checks
(every spin box gets real bounds and enough decimals: ``QDoubleSpinBox`` rounds values to its
decimals). ``float | None`` and ``int | None`` fields get an :class:`OptionalFloat` (a check box
and a spin box). The
main settings are always visible, the rest sit in a collapsible *Advanced* section; an invalid
combination of values is shown as a message under the form.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any

from docstring_parser import parse
from magicgui.widgets import CheckBox, FloatSpinBox, create_widget
from magicgui.widgets.bases import ValuedContainerWidget, ValueWidget
from qtpy.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget
from superqt import QCollapsible

from napari_miner.core.config import FIELD_RANGES, MinerConfig
from napari_miner.core.errors import ConfigError

__all__ = ["MAIN_FIELDS", "OptionalFloat", "SettingsForm", "config_widgets"]

MAIN_FIELDS = (
    "n_levels",
    "block_size",
    "hidden_width",
    "hidden_layers",
    "max_steps",
    "target_psnr",
)
"""Fields shown above the *Advanced* section."""

LABELS = {
    "n_levels": "levels",
    "block_size": "block size",
    "hidden_width": "hidden width",
    "hidden_layers": "hidden layers",
    "max_steps": "max steps / level",
    "target_psnr": "target PSNR",
    "block_target_mse": "block target MSE",
    "prune_mse": "prune MSE",
    "iou_threshold": "IoU threshold",
    "target_iou": "target IoU",
}
"""Form labels (the other fields are labelled with their name, ``_`` read as a space)."""

FLOAT_FORMAT = {  # name: (decimals, step)
    "omega_0": (2, 1.0),
    "learning_rate": (6, 1e-3),
    "lr_decay": (4, 1e-3),
    "target_psnr": (2, 0.5),
    "block_target_mse": (8, 1e-5),
    "prune_mse": (8, 1e-5),
    "prune_budget": (3, 0.05),
    "pixel_fraction": (3, 0.05),
    "plateau_rel_tol": (4, 0.005),
    "final_plateau_rel_tol": (4, 0.005),
    "iou_threshold": (3, 0.05),
    "target_iou": (3, 0.01),
    "lite_energy": (3, 0.5),
    "qat_budget_db": (3, 0.05),
}
"""Decimals and step of every float field's spin box."""

PRACTICAL_MAX = {"omega_0": 1000.0, "target_psnr": 200.0}
"""Upper bounds of spin boxes whose setting has none (``math.inf`` in its range)."""
UNBOUNDED_MAX = 10.0
"""Upper bound of the other unbounded spin boxes (relative tolerances, MSEs)."""


def field_bounds(name: str) -> tuple[float, float]:
    """``(min, max)`` of the spin box of field ``name``, from the range the config checks.

    An open bound is moved one displayed step inwards; an infinite one gets a practical limit.
    """
    allowed = FIELD_RANGES[name]
    if allowed.integer:
        return allowed.low, allowed.high
    step = 10.0 ** -FLOAT_FORMAT[name][0]
    low = allowed.low + step if allowed.open_low else allowed.low
    high = allowed.high
    if math.isinf(high):
        high = PRACTICAL_MAX.get(name, UNBOUNDED_MAX)
    elif allowed.open_high:
        high -= step
    return low, high


def _value_if_set() -> dict[str, float | int]:
    """What an optional field starts at when its check box is ticked."""
    volume = MinerConfig.for_volume(occupancy=True)
    retire = MinerConfig().retire_mse
    return {
        "iou_threshold": volume.iou_threshold,
        "target_iou": volume.target_iou,
        "block_target_mse": retire,
        "prune_mse": retire,
        "weight_bits": 8,
        "split_width": MinerConfig().hidden_width,
        "lite_width": 8,
    }


class OptionalFloat(ValuedContainerWidget["float | None"]):
    """A ``float | None`` field: a check box (unticked = ``None``) and a float spin box.

    Parameters
    ----------
    value : float or None
        Start value.
    min, max : float
        Bounds of the spin box.
    decimals : int
        Decimals of the spin box.
    step : float
        Step of the spin box arrows.
    value_if_set : float, optional
        What the spin box shows when the start value is ``None`` (default ``min``).
    integer : bool
        Whether the number is an ``int`` (no decimals, :meth:`get_value` returns ``int``).
    **kwargs
        ``name``, ``label``, ``tooltip``… of the container.
    """

    def __init__(
        self,
        value: float | None = None,
        *,
        min: float = 0.0,  # noqa: A002 - magicgui's option names
        max: float = 1.0,  # noqa: A002
        decimals: int = 2,
        step: float = 0.01,
        value_if_set: float | None = None,
        integer: bool = False,
        **kwargs: Any,
    ) -> None:
        self._integer = integer
        self._on = CheckBox(value=value is not None, tooltip="unticked: None (automatic)")
        start = value if value is not None else (min if value_if_set is None else value_if_set)
        self._number = FloatSpinBox(value=start, min=min, max=max, step=step)
        self._number.native.setDecimals(decimals)
        self._number.value = start  # again, now that the decimals allow it
        self._number.enabled = value is not None
        self._on.changed.connect(self._emit)
        self._number.changed.connect(self._emit)
        super().__init__(
            value=value,
            widgets=[self._on, self._number],
            layout="horizontal",
            labels=False,
            nullable=True,
            **kwargs,
        )
        self.margins = (0, 0, 0, 0)

    def _emit(self, *_: Any) -> None:
        self._number.enabled = self._on.value
        self.changed.emit(self.get_value())

    def get_value(self) -> float | None:
        """The spin box's value, or ``None`` when unticked."""
        if not self._on.value:
            return None
        number = self._number.value
        return round(number) if self._integer else float(number)

    def set_value(self, value: float | None) -> None:
        """Tick and set the spin box, or untick for ``None``."""
        if value is not None:
            self._number.value = value
        self._on.value = value is not None


_ROLE = re.compile(r":\w+:`~?(?:[\w.]*\.)?(\w+)`")
"""A reST cross-reference (``:class:`~a.b.Progress```), shown as its last name."""


def _tooltips() -> dict[str, str]:
    """Each field's description from the numpy docstring of :class:`MinerConfig`."""
    tips = {}
    for param in parse(MinerConfig.__doc__ or "").params:
        text = _ROLE.sub(r"\1", (param.description or "").replace("``", ""))
        tips[param.arg_name] = " ".join(text.split())
    return tips


def config_widgets(defaults: MinerConfig) -> dict[str, ValueWidget]:
    """One magicgui widget per field of :class:`MinerConfig`, at the values of ``defaults``."""
    hints = typing.get_type_hints(MinerConfig)
    tips, if_set = _tooltips(), _value_if_set()
    widgets: dict[str, ValueWidget] = {}
    for field in dataclasses.fields(MinerConfig):
        name, hint = field.name, hints[field.name]
        value = getattr(defaults, name)
        low, high = field_bounds(name)
        options: dict[str, Any] = {"tooltip": tips.get(name), "min": low, "max": high}
        label = LABELS.get(name)
        if type(None) in typing.get_args(hint):  # float | None or int | None
            integer = FIELD_RANGES[name].integer
            decimals, step = (0, 1) if integer else FLOAT_FORMAT[name]
            widget: Any = OptionalFloat(
                value, name=name, label=label, decimals=decimals, step=step,
                value_if_set=if_set[name], integer=integer, **options,
            )  # fmt: skip
        else:
            if hint is float:
                options["step"] = FLOAT_FORMAT[name][1]
            widget = create_widget(
                value=value, annotation=hint, name=name, label=label, options=options
            )
            if hint is float:
                widget.native.setDecimals(FLOAT_FORMAT[name][0])
                widget.value = value  # again, now that the decimals allow it
        widgets[name] = widget
    widgets["target_psnr"].native.setSuffix(" dB")
    return widgets


class SettingsForm(QWidget):
    """The :class:`MinerConfig` form: main settings, an *Advanced* section and an error line.

    Parameters
    ----------
    defaults : MinerConfig, optional
        The values the form starts with (and the defaults :meth:`use_defaults` switches from).
    parent : QWidget, optional
        Qt parent.

    Attributes
    ----------
    fields : dict of str to magicgui ValueWidget
        One widget per :class:`MinerConfig` field, by name.
    main_form, advanced_form : QFormLayout
        The main fields, and the others (inside :attr:`collapsible`).
    collapsible : superqt.QCollapsible
        The *Advanced* section (collapsed at first).
    labels : list of QLabel
        The labels of the fields.
    defaults : MinerConfig
        The defaults of the kind of input the form is set up for.
    error_label : QLabel
        Why the values do not make a valid config (hidden when they do).
    """

    def __init__(self, defaults: MinerConfig | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.defaults = MinerConfig() if defaults is None else defaults
        self.fields = config_widgets(self.defaults)
        self.labels: list[QLabel] = []
        self.main_form, self.advanced_form = QFormLayout(), QFormLayout()
        for name, widget in self.fields.items():
            label = QLabel(widget.label)
            label.setToolTip(widget.tooltip)
            form = self.main_form if name in MAIN_FIELDS else self.advanced_form
            form.addRow(label, widget.native)
            self.labels.append(label)
            widget.changed.connect(self._validate)
        advanced = QWidget()
        advanced.setLayout(self.advanced_form)
        self.advanced_form.setContentsMargins(0, 0, 0, 0)
        self.collapsible = QCollapsible("Advanced", expandedIcon="▾", collapsedIcon="▸")
        self.collapsible.layout().setContentsMargins(0, 0, 0, 0)
        self.collapsible.content().layout().setContentsMargins(0, 0, 0, 0)
        self.collapsible.toggleButton().setToolTip("every other setting of the fit")
        self.collapsible.addWidget(advanced)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #ff6e6e")
        self.error_label.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.main_form)
        layout.addWidget(self.collapsible)
        layout.addWidget(self.error_label)

    def values(self) -> dict[str, Any]:
        """Every field's value."""
        return {name: widget.value for name, widget in self.fields.items()}

    def config(self) -> MinerConfig:
        """The config of the form.

        Raises
        ------
        ConfigError
            If the values do not make a valid config (e.g. ``target_iou`` without ``iou_threshold``).
        """
        return MinerConfig(**self.values())

    def set_values(self, **values: Any) -> None:
        """Set some fields (by name)."""
        unknown = set(values) - set(self.fields)
        if unknown:
            raise ConfigError(f"unknown MinerConfig settings: {sorted(unknown)}")
        for name, value in values.items():
            self.fields[name].value = value

    def use_defaults(self, defaults: MinerConfig) -> None:
        """Switch to the defaults of another kind of input (image, volume, occupancy volume).

        A field still at the previous kind's default takes the new default; a value edited by
        hand stays.
        """
        for name, widget in self.fields.items():
            if widget.value == getattr(self.defaults, name):
                widget.value = getattr(defaults, name)
        self.defaults = defaults

    def _validate(self, *_: Any) -> None:
        try:
            self.config()
        except ConfigError as error:
            self.error_label.setText(f"invalid settings: {error}")
            self.error_label.show()
        else:
            self.error_label.hide()
