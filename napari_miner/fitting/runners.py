"""What trains the tiles of a level: this process, or a cluster.

:class:`LocalRunner` trains them here; :class:`~napari_miner.fitting.distributed.ClusterRunner` as
dask.distributed tasks. Both yield the same items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..core.events import Progress
from .sinks import Running
from .work import TileDone, TileWork

__all__ = ["LocalRunner"]

Index = tuple[int, ...]


class LocalRunner:
    """Trains tiles one after the other in this process."""

    def __init__(self, work: TileWork) -> None:
        self.work = work

    def energies(
        self, level: int, tiles: Sequence[Index], tile_blocks: Index
    ) -> Iterator[tuple[Index, tuple[np.ndarray, np.ndarray]]]:
        """Every tile's block energies and counts (for the level's pruning threshold)."""
        for index in tiles:
            yield index, self.work.energies(level, index, tile_blocks)

    def train(
        self,
        level: int,
        tiles: Sequence[Index],
        tile_blocks: Index,
        threshold: float,
        clock: Callable[[], float],
    ) -> Iterator[tuple[Index, Progress | TileDone]]:
        """Train ``tiles`` of ``level``; yields ``(index, progress or TileDone)``."""
        for index in tiles:
            for item in self.work.train(level, index, tile_blocks, threshold, clock):
                yield index, item

    def running(self) -> Running | None:
        """The tile being trained, as a snapshot of its current MLPs."""
        current = self.work.current
        if current is None:
            return None
        level, region, training = current
        return level, region, training.snapshot()
