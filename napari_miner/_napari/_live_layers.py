"""The layers the MINER dock widget shows while (and after) fitting; main thread only.

Every layer lines up with the input layer, including an input layer that has its own ``scale`` and
``translate``: a level-``j`` pixel spans ``2**j`` input pixels, so its scale is ``2**j`` times the
input's and its translate is the input's plus ``(2**j - 1) / 2`` input pixels
(:func:`~napari_miner._napari.levels.level_transform`); the overlay's cells are whole level-0
blocks (``block_size`` input pixels).

Volumes (3D, not RGB) are volume-rendered: occupancy inputs (``SourceInfo.iso_range``) as an iso
surface at the middle of their value range, intensity volumes with napari's default (MIP). Only
the finest level trained so far stays visible (overlapping volumes would hide each other), the
overlay is translucent, and the fitted mesh is a Surface layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .levels import level_layer_name, level_transform

if TYPE_CHECKING:
    from napari_miner.core.layout import InputLayout

__all__ = [
    "LiveLayers",
    "SourceInfo",
    "compose",
    "final_layer_name",
    "level_colormap",
    "mesh_layer_name",
    "overlay_layer_name",
]


def final_layer_name(name: str) -> str:
    """Name of the fitted model's multiscale layer."""
    return f"{name} · MINER"


def overlay_layer_name(name: str) -> str:
    """Name of the active-blocks overlay."""
    return f"{name} · MINER active blocks"


def mesh_layer_name(name: str) -> str:
    """Name of the Surface layer of the fitted volume's mesh."""
    return f"{name} · MINER mesh"


def compose(
    transform: tuple[tuple[float, ...], tuple[float, ...]],
    scale: tuple[float, ...],
    translate: tuple[float, ...],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Apply a pixel-space ``(scale, translate)`` inside the input layer's ``scale``/``translate``.

    World position of data index ``i``: ``translate + scale * (t + s * i)``, so the composed
    transform is ``(scale * s, translate + scale * t)``.
    """
    s, t = transform
    new_scale = tuple(float(a) * float(b) for a, b in zip(scale, s, strict=True))
    new_translate = tuple(
        float(t0) + float(a) * float(b) for t0, a, b in zip(translate, scale, t, strict=True)
    )
    return new_scale, new_translate


def level_colormap(n_levels: int) -> Any:
    """Labels colormap of the overlay: label ``1 + j`` in level ``j``'s colour of the PSNR plot."""
    from napari.utils.colormaps import DirectLabelColormap

    from ._plot import level_color

    colors: dict[Any, Any] = {None: "transparent", 0: "transparent"}
    for j in range(n_levels):
        colors[j + 1] = level_color(j).name()
    return DirectLabelColormap(color_dict=colors)


@dataclass(frozen=True)
class SourceInfo:
    """What the live layers copy from the input (read once, on the main thread).

    ``volume`` says whether the input has three spatial axes (its layout's ``is_volume``);
    ``iso_range`` is the value range of an occupancy (binary) volume, rendered as an iso surface
    at its midpoint; ``None`` for anything else.
    """

    name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    rgb: bool
    volume: bool = False
    contrast_limits: tuple[float, float] | None = None
    colormap: Any = None
    gamma: float = 1.0
    iso_range: tuple[float, float] | None = None

    @classmethod
    def from_layer(cls, layer: Any, layout: InputLayout) -> SourceInfo:
        """Read the display settings of a napari Image layer whose data has ``layout``."""
        rgb = bool(layer.rgb)
        return cls(
            name=str(layer.name),
            scale=tuple(float(v) for v in layer.scale),
            translate=tuple(float(v) for v in layer.translate),
            rgb=rgb,
            volume=layout.is_volume,
            contrast_limits=tuple(float(v) for v in layer.contrast_limits),
            colormap=None if rgb else layer.colormap,
            gamma=float(layer.gamma),
        )

    @classmethod
    def from_source(cls, name: str, layout: InputLayout) -> SourceInfo:
        """Display settings for an input read from a path (no layer): unit scale, gray."""
        ndim = len(layout.spatial_shape)
        return cls(
            name=name, scale=(1.0,) * ndim, translate=(0.0,) * ndim, rgb=layout.rgb,
            volume=layout.is_volume,
        )  # fmt: skip

    def with_iso_range(self, iso_range: tuple[float, float] | None) -> SourceInfo:
        """The same, shown as an iso surface at the middle of ``iso_range``."""
        return replace(self, iso_range=iso_range)

    @property
    def ndim(self) -> int:
        """Spatial dimensions of the input."""
        return len(self.scale)


class LiveLayers:
    """Creates, refreshes and finally replaces the MINER layers of one fit.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer (possibly napari's public-only proxy).
    source : SourceInfo
        The input layer's name, transform and display settings.
    block_size : int
        Block side of the fit (overlay cell size in input pixels).
    n_levels : int
        Pyramid levels of the fit (overlay labels ``1 … n_levels``).
    """

    def __init__(self, viewer: Any, source: SourceInfo, block_size: int, n_levels: int) -> None:
        self.viewer = viewer
        self.source = source
        self.block_size = block_size
        self.n_levels = n_levels
        self.level_layers: dict[int, Any] = {}
        self.overlay: Any = None
        self.final: Any = None
        self.mesh: Any = None
        self.extra: list[Any] = []
        """Further layers of this fit (the debugging views), kept below the overlay."""

    # ---------------------------------------------------------------- transforms
    def level_transform(self, level: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """World ``(scale, translate)`` of level ``level``'s layer."""
        src = self.source
        return compose(level_transform(level, src.ndim), src.scale, src.translate)

    def overlay_transform(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """World ``(scale, translate)`` of the level-0 block-grid overlay."""
        return self.block_transform(0)

    def block_transform(self, level: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """World ``(scale, translate)`` of level ``level``'s block grid (one cell per block).

        A level-``j`` block spans ``block_size * 2**j`` input pixels; each cell's centre lies on
        the centre of the input pixels it covers.
        """
        src, b = self.source, float(self.block_size * 2**level)
        return compose(((b,) * src.ndim, ((b - 1) / 2,) * src.ndim), src.scale, src.translate)

    # -------------------------------------------------------------------- layers
    def _image_kwargs(self) -> dict[str, Any]:
        src = self.source
        kwargs: dict[str, Any] = {"rgb": src.rgb}
        if src.contrast_limits is not None and src.contrast_limits[1] > src.contrast_limits[0]:
            kwargs["contrast_limits"] = src.contrast_limits
        if src.colormap is not None:
            kwargs["colormap"] = src.colormap
            kwargs["gamma"] = src.gamma
        if src.volume and src.iso_range is not None:
            lo, hi = src.iso_range
            kwargs["rendering"] = "iso"
            kwargs["iso_threshold"] = (float(lo) + float(hi)) / 2.0
        return kwargs

    def _present(self, layer: Any) -> bool:
        return layer is not None and layer in self.viewer.layers

    def show_level(self, level: int, data: np.ndarray | list) -> Any:
        """Create the live layer of ``level`` or replace its data.

        ``data`` is an array, or a lazy multiscale list (out-of-core fits): the layer is then a
        multiscale layer that decodes only what is shown.
        """
        multiscale = isinstance(data, list)
        layer = self.level_layers.get(level)
        if self._present(layer):
            if bool(layer.multiscale) == multiscale:
                layer.data = data
                return layer
            self.viewer.layers.remove(layer)
        scale, translate = self.level_transform(level)
        layer = self.viewer.add_image(
            data,
            name=level_layer_name(self.source.name, level),
            scale=scale,
            translate=translate,
            multiscale=multiscale,
            **self._image_kwargs(),
        )
        self.level_layers[level] = layer
        if self.source.volume:  # in 3D overlapping volumes hide each other: show the finest
            for coarser, other in self.level_layers.items():
                if coarser > level and self._present(other):
                    other.visible = False
        self.raise_overlay()
        return layer

    def show_overlay(self, labels: np.ndarray) -> Any:
        """Create the active-blocks overlay or replace its labels."""
        if self._present(self.overlay):
            self.overlay.data = labels
            return self.overlay
        scale, translate = self.overlay_transform()
        kwargs: dict[str, Any] = {"opacity": 0.4}
        if self.source.volume:  # translucent boxes in 3D, so that the volume stays visible
            kwargs = {"opacity": 0.15, "rendering": "translucent"}
        self.overlay = self.viewer.add_labels(
            labels,
            name=overlay_layer_name(self.source.name),
            scale=scale,
            translate=translate,
            colormap=level_colormap(self.n_levels),
            **kwargs,
        )
        return self.overlay

    def show_final(self, pyramid: list | None, volume: np.ndarray | None = None) -> Any:
        """Show the fitted model as one layer (hides the per-level layers).

        A lazy multiscale layer of ``pyramid``, or for a volume its decoded level 0 ``volume`` (in
        3D napari would render only the coarsest level of a multiscale layer). Without either
        (``as_pyramid`` unavailable) the level layers stay as the result.
        """
        if not pyramid and volume is None:
            return None
        if self._present(self.final):
            self.viewer.layers.remove(self.final)
        src = self.source
        data, multiscale = (pyramid, True) if volume is None else (volume, False)
        self.final = self.viewer.add_image(
            data,
            name=final_layer_name(src.name),
            multiscale=multiscale,
            scale=src.scale,
            translate=src.translate,
            **self._image_kwargs(),
        )
        for layer in self.level_layers.values():
            if self._present(layer):
                layer.visible = False
        self.raise_overlay()
        return self.final

    def show_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> Any:
        """Add (or replace) the Surface layer of the fitted volume's mesh.

        ``vertices`` are level-0 voxel coordinates, so the surface takes the input's transform.
        """
        if self._present(self.mesh):
            self.viewer.layers.remove(self.mesh)
        src = self.source
        self.mesh = self.viewer.add_surface(
            (vertices, faces),
            name=mesh_layer_name(src.name),
            scale=src.scale,
            translate=src.translate,
            shading="smooth",
        )
        self.raise_overlay()
        return self.mesh

    def raise_overlay(self) -> None:
        """Move the active-blocks overlay to the top of the layer list."""
        if not self._present(self.overlay):
            return
        layers = self.viewer.layers
        index = layers.index(self.overlay)
        if index != len(layers) - 1:
            layers.move(index, len(layers))

    def all_layers(self) -> list[Any]:
        """Every layer of this fit still in the viewer."""
        candidates = [*self.level_layers.values(), *self.extra, self.overlay, self.final, self.mesh]
        return [layer for layer in candidates if self._present(layer)]

    def remove(self) -> None:
        """Remove every layer of this fit from the viewer."""
        for layer in self.all_layers():
            self.viewer.layers.remove(layer)
        self.level_layers, self.overlay, self.final, self.mesh = {}, None, None, None
        self.extra = []
