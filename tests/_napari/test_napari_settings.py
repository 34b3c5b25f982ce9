"""The settings form generated from MinerConfig (magicgui): fields, bounds, tooltips, defaults."""

from __future__ import annotations

import dataclasses

import pytest

from napari_miner import MinerConfig
from napari_miner._napari._settings import MAIN_FIELDS, OptionalFloat, SettingsForm, field_bounds

pytestmark = pytest.mark.viewer


@pytest.fixture
def form(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    return form


def test_every_field_has_a_bounded_widget_and_a_tooltip(form):
    names = [f.name for f in dataclasses.fields(MinerConfig)]
    assert list(form.fields) == names
    assert form.main_form.rowCount() == len(MAIN_FIELDS) == 6
    assert form.advanced_form.rowCount() == len(names) - len(MAIN_FIELDS)
    for name in MAIN_FIELDS:
        row, _ = form.main_form.getWidgetPosition(form.fields[name].native)
        assert row >= 0, name
    for name, widget in form.fields.items():
        low, high = field_bounds(name)
        assert low < high < float("inf"), name
        assert widget.tooltip and ":class:" not in widget.tooltip, name
        if not isinstance(widget, OptionalFloat):
            assert (widget.min, widget.max) == (low, high), name
    assert form.fields["n_levels"].tooltip.startswith("Number of pyramid levels")
    assert [label.text() for label in form.labels[:3]] == ["levels", "block size", "hidden width"]
    assert form.fields["target_psnr"].label == "target PSNR"
    assert form.fields["target_psnr"].native.suffix() == " dB"
    assert not form.collapsible.isExpanded()  # "Advanced" starts collapsed


def test_the_form_round_trips_configs(form):
    assert form.config() == MinerConfig()
    small = MinerConfig(
        learning_rate=1.5e-4, lr_decay=0.9995, block_target_mse=2.5e-6, prune_mse=1e-7,
        iou_threshold=0.25, target_iou=0.875, plateau_rel_tol=0.0125, seed=2**40,
    )  # fmt: skip
    for config in (MinerConfig.for_volume(), small, MinerConfig()):
        form.set_values(**config.to_dict())
        assert form.config() == config  # no value rounded away by a spin box
    form.set_values(prune_mse=None)
    assert form.config().prune_mse is None


def test_defaults_switch_but_edits_stay(form):
    form.set_values(hidden_width=33)
    form.use_defaults(MinerConfig.for_volume(occupancy=True))
    assert form.config() == MinerConfig.for_volume(occupancy=True, hidden_width=33)
    form.set_values(max_steps=123)
    form.use_defaults(MinerConfig())
    assert form.config() == MinerConfig(hidden_width=33, max_steps=123)


def test_an_invalid_combination_is_a_message(form):
    assert form.error_label.isHidden()
    form.fields["target_iou"].value = 0.99  # needs iou_threshold
    assert not form.error_label.isHidden()
    assert "target_iou needs iou_threshold" in form.error_label.text()
    with pytest.raises(ValueError, match="target_iou"):
        form.config()
    form.fields["iou_threshold"].value = 0.5
    assert form.error_label.isHidden()
    assert form.config().target_iou == 0.99
