"""Direct reading of JPEG-tiled TIFF/SVS pyramids: tile offsets from tifffile, decoding by libjpeg-turbo.

OpenSlide's `read_region` composes every request through cairo in RGBA and runs at about a sixth of
what libjpeg-turbo decodes; for the commonest files (Aperio SVS and generic tiled TIFF with JPEG tiles)
`JpegPyramid` reads the compressed tiles at their offsets (`os.pread`) and decodes them with imagecodecs'
libjpeg-turbo, the library OpenSlide itself decodes with, with the colour conversion OpenSlide uses
(RGB JPEG for photometric RGB, YCbCr otherwise), so pixels are the same (tests compare them with
OpenSlide's on the real sample slide and on generated ones). Anything else (other vendors, other codecs,
levels that do not match OpenSlide's) is left to OpenSlide: `JpegPyramid.open` returns None.

Decoded tiles stay in an LRU cache of a few tile rows of level 0, so reading a grid's tiles in row-major
order decodes each source tile once, however the grid's tiles straddle the file's tiles. Pixels outside
the level, and tiles that are not stored (byte count 0, as OpenSlide treats them), are white.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from mvh.errors import SlideError

_JPEG = 7
_CACHE_ROWS = 4  # rows of level-0 tiles kept decoded: a grid row spans up to 3, plus the one it shares


@dataclass(frozen=True)
class _Level:
    """Where one level's JPEG tiles are and how to decode them."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    across: int
    offsets: np.ndarray
    counts: np.ndarray
    tables: bytes | None
    colorspace: str | None


def _level_of(page: tifffile.TiffPage) -> _Level | None:
    """The level a tiled page describes, or None when it is not 8-bit RGB JPEG in one plane."""
    if not (
        page.is_tiled
        and page.compression == _JPEG
        and page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
        and page.samplesperpixel == 3
        and page.bitspersample == 8
        and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
        and page.tiledepth == 1
    ):
        return None
    return _Level(
        width=int(page.imagewidth),
        height=int(page.imagelength),
        tile_w=int(page.tilewidth),
        tile_h=int(page.tilelength),
        across=-(-int(page.imagewidth) // int(page.tilewidth)),
        offsets=np.asarray(page.dataoffsets, dtype=np.int64),
        counts=np.asarray(page.databytecounts, dtype=np.int64),
        tables=page.jpegtables,
        # OpenSlide decodes photometric-RGB JPEG tiles without a colour transform, as Aperio writes them.
        colorspace="RGB" if page.photometric == tifffile.PHOTOMETRIC.RGB else None,
    )


class JpegPyramid:
    """The levels of a JPEG-tiled TIFF, read as RGB uint8 regions in level pixel coordinates."""

    def __init__(self, path: Path, levels: Sequence[_Level]) -> None:
        self.path = Path(path)
        self.levels = list(levels)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._capacity = max(16, _CACHE_ROWS * self.levels[0].across)

    @classmethod
    def open(cls, path: str | Path, level_dimensions: Sequence[tuple[int, int]]) -> JpegPyramid | None:
        """The pyramid of `path` when its tiled pages are exactly these levels in JPEG, else None."""
        try:
            with tifffile.TiffFile(path) as tif:
                tiled = [p for p in tif.pages if p.is_tiled]
                levels = [_level_of(p) for p in tiled[: len(level_dimensions)]]
        except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError):
            return None
        dims = [(lv.width, lv.height) if lv is not None else None for lv in levels]
        if dims != [tuple(d) for d in level_dimensions]:
            return None
        return cls(Path(path), levels)  # type: ignore[arg-type]

    def _tile(self, level: int, index: int) -> np.ndarray | None:
        """Decoded tile `index` of `level` (uint8 [tile_h, tile_w, 3]), or None when it is not stored."""
        key = (level, index)
        tile = self._cache.get(key)
        if tile is not None:
            self._cache.move_to_end(key)
            return tile
        lv = self.levels[level]
        count = int(lv.counts[index])
        if count == 0:
            return None
        data = os.pread(self._fd, count, int(lv.offsets[index]))
        try:
            tile = imagecodecs.jpeg8_decode(
                data, tables=lv.tables, colorspace=lv.colorspace, outcolorspace="RGB"
            )
        except imagecodecs.Jpeg8Error as exc:
            raise SlideError(
                f"{self.path}: cannot decode JPEG tile {index} of level {level} ({exc}); the file may be "
                "corrupt"
            ) from exc
        self._cache[key] = tile
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return tile

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 [h, w, 3] at `level` from level-pixel top-left (x, y); white outside the level."""
        lv = self.levels[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lv.width), min(y + h, lv.height)
        inside = (x0, y0, x1, y1) == (x, y, x + w, y + h)
        # Inside the level every pixel is written below, unless a tile is not stored (then refilled white).
        out = np.empty((h, w, 3), dtype=np.uint8) if inside else np.full((h, w, 3), 255, dtype=np.uint8)
        for ty in range(y0 // lv.tile_h, -(-y1 // lv.tile_h)) if y1 > y0 and x1 > x0 else ():
            top = ty * lv.tile_h
            r0, r1 = max(y0, top), min(y1, top + lv.tile_h)
            for tx in range(x0 // lv.tile_w, -(-x1 // lv.tile_w)):
                tile = self._tile(level, ty * lv.across + tx)
                left = tx * lv.tile_w
                c0, c1 = max(x0, left), min(x1, left + lv.tile_w)
                if tile is None:
                    out[r0 - y : r1 - y, c0 - x : c1 - x] = 255
                    continue
                out[r0 - y : r1 - y, c0 - x : c1 - x] = tile[r0 - top : r1 - top, c0 - left : c1 - left]
        return out

    def close(self) -> None:
        """Close the file and drop the decoded tiles."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._cache.clear()
