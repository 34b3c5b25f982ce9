"""Surface meshes of fitted occupancy volumes: marching cubes, and export to PLY/OBJ/STL/OFF."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import NamedTuple

import numpy as np
from skimage.measure import marching_cubes

from ..core.errors import InvalidInputError
from ..core.model import PyramidModel

MESH_FORMATS = (".ply", ".obj", ".stl", ".off")


class Mesh(NamedTuple):
    """A triangle mesh in the input's voxel coordinates (z, y, x), as napari's Surface layer takes it.

    Attributes
    ----------
    vertices : numpy.ndarray
        ``(n_vertices, 3)`` float32.
    faces : numpy.ndarray
        ``(n_faces, 3)`` int32 vertex indices.
    normals : numpy.ndarray
        ``(n_vertices, 3)`` float32 outward vertex normals.
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray


def extract_mesh(model: PyramidModel, level: int = 0, threshold: float = 0.5) -> Mesh:
    """Marching cubes of a fitted volume at ``threshold`` (normalised units: 0 = min, 1 = max).

    The volume is zero-padded by one voxel so that shapes touching the border are closed; vertices
    are scaled by ``2**level`` so that every level's mesh lies in level-0 voxel coordinates.

    Raises
    ------
    InvalidInputError
        If the model is not a single-channel 3D volume, or the surface is empty at that threshold.
    """
    if len(model.layout.spatial_shape) != 3 or model.layout.n_channels != 1:
        raise InvalidInputError("meshes need a single-channel 3D volume model")
    values = model.decode_normalized(level)[0].numpy()
    if not values.min() < threshold < values.max():
        raise InvalidInputError(
            f"no surface at threshold {threshold}: the decoded volume spans "
            f"[{values.min():.3g}, {values.max():.3g}]"
        )
    padded = np.pad(values, 1, mode="constant", constant_values=min(0.0, float(values.min())))
    vertices, faces, normals, _ = marching_cubes(padded, level=threshold)
    factor = 2.0**level
    vertices = (vertices - 1.0) * factor + (factor - 1.0) / 2.0
    # skimage's normals point outwards for high-inside occupancy; its faces wind the other way
    # round, so reverse them (counter-clockwise seen from outside, as PLY/OBJ readers expect)
    faces = np.ascontiguousarray(faces[:, ::-1], dtype=np.int32)
    return Mesh(vertices.astype(np.float32), faces, normals.astype(np.float32))


def export_mesh(
    model: PyramidModel,
    path: str | PathLike[str],
    level: int = 0,
    threshold: float = 0.5,
) -> Mesh:
    """Extract the surface (see :func:`extract_mesh`) and write it; the suffix picks the format.

    Supported: ``.ply`` (binary), ``.obj``, ``.stl``, ``.off``, written with trimesh. The write is
    atomic (a temporary file renamed into place). Returns the mesh.
    """
    import trimesh

    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise InvalidInputError(f"unsupported mesh format {suffix!r}: use one of {MESH_FORMATS}")
    mesh = extract_mesh(model, level, threshold)
    surface = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_normals=mesh.normals, process=False)
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        surface.export(temporary, file_type=suffix[1:])
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)
    return mesh
