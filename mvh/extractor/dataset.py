"""A PyTorch Dataset over the tiles of one or several tile grids, decoded where it is indexed.

Slide handles are opened lazily, per process: the dataset pickles without them (spawn), and a forked
DataLoader worker that inherits handles from its parent discards them and opens its own, since OpenSlide
handles must not be shared across processes. At most `max_open_slides` handles stay open per process
(least recently used closed first), so a dataset over thousands of slides does not run out of file
descriptors.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mvh.extractor.slide import Slide, open_slide
from mvh.extractor.tiling import TileGrid, read_tile


class TileDataset(Dataset):
    """Tiles of `grids` in order; item = (uint8 [tile_px, tile_px, 3] or `transform(tile)`, global index)."""

    def __init__(
        self,
        grids: TileGrid | Sequence[TileGrid],
        transform: Callable[[np.ndarray], Any] | None = None,
        max_open_slides: int = 32,
    ):
        if max_open_slides < 1:
            raise ValueError(f"max_open_slides must be >= 1, got {max_open_slides}")
        self.grids: list[TileGrid] = [grids] if isinstance(grids, TileGrid) else list(grids)
        self.transform = transform
        self.max_open_slides = max_open_slides
        self._offsets = np.cumsum([0] + [len(g) for g in self.grids], dtype=np.int64)
        self._slides: OrderedDict[int, Slide] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(grid number, tile number in that grid) of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"tile index {index} out of range for {len(self)} tiles")
        g = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return g, int(index - self._offsets[g])

    def _slide(self, g: int) -> Slide:
        if self._pid != os.getpid():
            self._slides = OrderedDict()  # inherited through fork: never use the parent's handles
            self._pid = os.getpid()
        slide = self._slides.get(g)
        if slide is None:
            grid = self.grids[g]
            slide = open_slide(grid.slide_path, mpp=grid.slide_mpp)
            self._slides[g] = slide
            while len(self._slides) > self.max_open_slides:
                self._slides.popitem(last=False)[1].close()
        else:
            self._slides.move_to_end(g)
        return slide

    def __getitem__(self, index: int) -> tuple[Any, int]:
        g, i = self.locate(int(index))
        tile = read_tile(self._slide(g), self.grids[g], i)
        return (self.transform(tile) if self.transform is not None else tile), int(index)

    def close(self) -> None:
        """Close the slide handles this process opened."""
        if self._pid == os.getpid():
            for slide in self._slides.values():
                slide.close()
        self._slides = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slides"] = OrderedDict()
        return state
