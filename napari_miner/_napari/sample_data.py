"""Sample data contributed to napari's ``File > Open Sample`` menu.

Each function returns a list of napari ``LayerData`` tuples ``(data, kwargs, layer_type)``.
The images come bundled with scikit-image, so no download is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LayerData = tuple[np.ndarray, dict[str, Any], str]

RETINA_CROP = 1280
"""Side length of the top-left crop taken from :func:`skimage.data.retina`."""


def astronaut_image() -> np.ndarray:
    """Return scikit-image's astronaut photograph, ``(512, 512, 3)`` ``uint8`` RGB."""
    from skimage import data

    return data.astronaut()


def retina_image() -> np.ndarray:
    """Return the top-left 1280x1280 crop of :func:`skimage.data.retina` (``uint8`` RGB)."""
    from skimage import data

    return np.ascontiguousarray(data.retina()[:RETINA_CROP, :RETINA_CROP])


def astronaut() -> list[LayerData]:
    """Astronaut (MINER): a 512x512 RGB photograph."""
    return [(astronaut_image(), {"name": "astronaut", "rgb": True}, "image")]


def retina() -> list[LayerData]:
    """Retina crop (MINER): a 1280x1280 RGB fundus photograph."""
    return [(retina_image(), {"name": "retina", "rgb": True}, "image")]
