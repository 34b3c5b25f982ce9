import numpy as np
import pytest
import trimesh
from miner_test_data import torus

import napari_miner as nm
from napari_miner.io.mesh import export_mesh, extract_mesh


@pytest.fixture(scope="module")
def sphere_model():
    n = 48
    z, y, x = np.mgrid[0:n, 0:n, 0:n]
    ball = (z - 24.5) ** 2 + (y - 20.5) ** 2 + (x - 26.5) ** 2 < 14**2
    return ball, nm.fit(ball, nm.MinerConfig.for_volume(), device="cpu")


def test_mesh_of_a_ball_is_a_closed_sphere_with_outward_normals(sphere_model):
    ball, model = sphere_model
    mesh = extract_mesh(model)
    centre = np.array([24.5, 20.5, 26.5])
    radii = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert abs(np.median(radii) - 14) < 0.75
    outward = np.einsum("ij,ij->i", mesh.normals, mesh.vertices - centre)
    assert (outward > 0).mean() > 0.98
    surface = trimesh.Trimesh(mesh.vertices, mesh.faces)
    assert surface.is_watertight
    assert surface.volume == pytest.approx(ball.sum(), rel=0.05)


def test_coarser_level_mesh_lies_in_level0_coordinates(sphere_model):
    _, model = sphere_model
    fine, coarse = extract_mesh(model, 0), extract_mesh(model, 1)
    np.testing.assert_allclose(coarse.vertices.mean(axis=0), fine.vertices.mean(axis=0), atol=1.0)


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".stl"])
def test_export_round_trips_through_trimesh(sphere_model, tmp_path, suffix):
    _, model = sphere_model
    path = tmp_path / f"ball{suffix}"
    mesh = export_mesh(model, path)
    loaded = trimesh.load(path, process=False)
    assert len(loaded.faces) == len(mesh.faces)
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_requests_are_explained(sphere_model, tmp_path):
    _, model = sphere_model
    with pytest.raises(nm.InvalidInputError, match="format"):
        export_mesh(model, tmp_path / "ball.vtk")
    with pytest.raises(nm.InvalidInputError, match="no surface"):
        extract_mesh(model, threshold=50.0)
    image_model = nm.fit(
        np.random.default_rng(0).random((32, 32)),
        nm.MinerConfig(n_levels=2, block_size=8, max_steps=5),
        device="cpu",
    )
    with pytest.raises(nm.InvalidInputError, match="3D volume"):
        extract_mesh(image_model)


def test_torus_mesh_has_genus_one():
    volume = torus((40, 56, 56))
    model = nm.fit(volume, nm.MinerConfig.for_volume(), device="cpu")
    surface = trimesh.Trimesh(*extract_mesh(model)[:2])
    assert surface.is_watertight
    assert surface.euler_number == 0  # a torus: V - E + F = 0
