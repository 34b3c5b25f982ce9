"""3D volumes: occupancy (IoU) and intensity fits at the volume defaults."""

import numpy as np
import pytest
from miner_test_data import intensity_volume, spheres, torus

import napari_miner as nm
from napari_miner.core.metrics import iou, psnr


@pytest.mark.parametrize(
    "volume", [spheres(64), torus((48, 64, 56))], ids=["union-of-spheres", "torus-odd-shape"]
)
def test_occupancy_reaches_iou_099_at_default_settings(volume):
    run = nm.fit_iter(volume, nm.MinerConfig.for_volume(), device="cpu")
    events = list(run)
    done = events[-1]
    assert isinstance(done, nm.Finished)
    decoded = done.model.decode()
    assert decoded.dtype == bool and decoded.shape == volume.shape
    assert iou(volume, decoded) >= 0.99
    assert done.iou == pytest.approx(iou(volume, decoded), abs=1e-9)
    progress = [e for e in events if isinstance(e, nm.Progress)]
    assert all(e.iou is not None and 0 <= e.iou <= 1 for e in progress)


def test_intensity_volume_reaches_35_db():
    volume = intensity_volume((40, 48, 44))
    model = nm.fit(volume, nm.MinerConfig.for_volume(occupancy=False), device="cpu")
    assert psnr(volume, model.decode()) >= 35.0


def test_fit_stops_at_target_iou():
    volume = spheres(48, seed=3)
    config = nm.MinerConfig.for_volume(target_iou=0.9)
    *_, done = nm.fit_iter(volume, config, device="cpu")
    assert done.reason == "target"
    assert 0.9 <= done.iou < 1.0


def test_volume_levels_and_regions():
    volume = torus((37, 45, 29))
    model = nm.fit(volume, nm.MinerConfig.for_volume(n_levels=3, max_steps=30), device="cpu")
    assert model.decode(0).shape == (37, 45, 29)
    assert model.decode(2).shape == (10, 12, 8)
    full = model.decode_normalized(1)
    region = (slice(3, 15), slice(0, 23), slice(5, 9))
    part = model.decode_normalized(1, region)
    np.testing.assert_allclose(part.numpy(), full[:, 3:15, 0:23, 5:9].numpy(), atol=1e-6)


def test_iou_settings_are_validated():
    with pytest.raises(nm.ConfigError, match="iou_threshold"):
        nm.MinerConfig(target_iou=0.99)
    with pytest.raises(nm.ConfigError, match="target_iou"):
        nm.MinerConfig(iou_threshold=0.5, target_iou=1.5)
