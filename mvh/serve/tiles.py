"""Pixels for the browser: DeepZoom tiles (OpenSlide's DeepZoomGenerator, JPEG) and stored tiles as JPEG.

Both are kept in memory as JPEG bytes with a content ETag (`tile_cache`: LRU bounded by bytes), so a cached
tile costs a dict lookup; DeepZoom generators keep their slide open, bounded by count. Slides are opened
only through the path the store recorded for a slide id (see `catalog`).
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from mvh.errors import MvhError, SlideError
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import make_tile_grid_at, read_tile
from mvh.serve.catalog import NotFound, SlideRecord, StoreEntry
from mvh.serve.lru import LruCache

DZ_TILE = 254
DZ_OVERLAP = 1
JPEG_QUALITY = 85
THUMBNAIL_PX = 256

@dataclass(frozen=True)
class Tile:
    """JPEG bytes and their ETag (a digest of the bytes, quoted as HTTP wants it)."""

    data: bytes
    etag: str

    @classmethod
    def of(cls, data: bytes) -> Tile:
        """The tile of these JPEG bytes."""
        return cls(data, '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"')


def tile_cache(max_bytes: int) -> LruCache[Hashable, Tile]:
    """A cache of tiles bounded by their total JPEG bytes."""
    return LruCache(max_bytes, weight=lambda tile: len(tile.data))


def _jpeg(image: Image.Image | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _open_deepzoom_source(record: SlideRecord) -> Any:
    """An OpenSlide (or ImageSlide for plain images) over the recorded file of a slide."""
    if record.path is None or not record.path.is_file():
        raise NotFound(f"the file of slide {record.slide_id!r} is not at its recorded path on this machine")
    try:
        if openslide.OpenSlide.detect_format(str(record.path)) is not None:
            return openslide.OpenSlide(str(record.path))
        return openslide.ImageSlide(str(record.path))
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        raise SlideError(f"slide {record.slide_id!r} cannot be opened for viewing: {exc}") from exc


class TileServer:
    """DeepZoom descriptors and tiles, and stored tiles as JPEG, with caches shared by all requests."""

    def __init__(self, generators: int = 16, cache_bytes: int = 256 * 2**20) -> None:
        self._generators: LruCache[tuple[str, str], tuple[Any, DeepZoomGenerator]] = LruCache(
            generators, on_evict=lambda pair: pair[0].close()
        )
        self._open_lock = threading.Lock()
        self.cache = tile_cache(cache_bytes)  # DeepZoom and stored tiles, told apart by their keys

    def cached_deepzoom(self, store: str, slide_id: str, level: int, col: int, row: int) -> Tile | None:
        """A DeepZoom tile already made (None when it is not in memory)."""
        return self.cache.get(("dz", store, slide_id, level, col, row))

    def cached_stored(self, store: str, slide_id: str, x: int, y: int) -> Tile | None:
        """A stored tile already read (None when it is not in memory)."""
        return self.cache.get(("stored", store, slide_id, x, y))

    def _opened(self, entry: StoreEntry, slide_id: str) -> tuple[Any, DeepZoomGenerator]:
        key = (entry.name, slide_id)
        cached = self._generators.get(key)
        if cached is not None:
            return cached
        with self._open_lock:
            cached = self._generators.get(key)
            if cached is not None:
                return cached
            source = _open_deepzoom_source(entry.slide(slide_id))
            # limit_bounds=False: DeepZoom pixel coordinates are level-0 pixels, as the store's x, y
            generator = DeepZoomGenerator(source, tile_size=DZ_TILE, overlap=DZ_OVERLAP, limit_bounds=False)
            return self._generators.put(key, (source, generator))

    def _generator(self, entry: StoreEntry, slide_id: str) -> DeepZoomGenerator:
        return self._opened(entry, slide_id)[1]

    def properties(self, entry: StoreEntry, slide_id: str) -> tuple[dict[str, str], list[str]]:
        """The slide file's OpenSlide properties and the names of its associated images."""
        source = self._opened(entry, slide_id)[0]
        return dict(source.properties), list(source.associated_images)

    def associated(self, entry: StoreEntry, slide_id: str, name: str) -> Tile:
        """An associated image of the slide file (label, macro, ...) as JPEG (NotFound when absent)."""
        key = ("associated", entry.name, slide_id, name)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        images = self._opened(entry, slide_id)[0].associated_images
        if name not in images:
            raise NotFound(f"slide {slide_id!r} has no {name} image in its file")
        return self.cache.put(key, Tile.of(_jpeg(images[name])))

    def thumbnail(self, entry: StoreEntry, slide_id: str) -> Tile:
        """The whole slide at most THUMBNAIL_PX on a side, as JPEG."""
        key = ("thumbnail", entry.name, slide_id)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        image = self._opened(entry, slide_id)[0].get_thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        return self.cache.put(key, Tile.of(_jpeg(image)))

    def descriptor(self, entry: StoreEntry, slide_id: str, files_url: str) -> dict[str, Any]:
        """The DZI descriptor as OpenSeadragon's JSON form, its tiles under `files_url`."""
        generator = self._generator(entry, slide_id)
        width, height = generator.level_dimensions[-1]
        return {
            "Image": {
                "xmlns": "http://schemas.microsoft.com/deepzoom/2008",
                "Url": files_url,
                "Format": "jpeg",
                "Overlap": str(DZ_OVERLAP),
                "TileSize": str(DZ_TILE),
                "Size": {"Width": str(width), "Height": str(height)},
            }
        }

    def deepzoom_tile(self, entry: StoreEntry, slide_id: str, level: int, col: int, row: int) -> Tile:
        """One DeepZoom tile as JPEG (NotFound outside the pyramid)."""
        key = ("dz", entry.name, slide_id, level, col, row)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        generator = self._generator(entry, slide_id)
        if not 0 <= level < generator.level_count:
            raise NotFound(f"DeepZoom level {level} is outside 0..{generator.level_count - 1}")
        cols, rows = generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise NotFound(f"DeepZoom tile ({col}, {row}) is outside level {level} ({cols} x {rows} tiles)")
        try:
            image = generator.get_tile(level, (col, row))
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise SlideError(f"slide {slide_id!r}: tile {level}/{col}_{row} cannot be read: {exc}") from exc
        return self.cache.put(key, Tile.of(_jpeg(image)))

    def stored_tile(self, entry: StoreEntry, slide_id: str, x: int, y: int) -> Tile:
        """A stored tile read back from its slide at the store's geometry, as JPEG."""
        key = ("stored", entry.name, slide_id, x, y)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        entry.require_tile(slide_id, x, y)
        pixels = read_stored_pixels(entry, slide_id, x, y)
        return self.cache.put(key, Tile.of(_jpeg(pixels)))

    def footprint(self, entry: StoreEntry, slide_id: str) -> int:
        """The level-0 side of the slide's stored tiles (as extraction computed it)."""
        record = entry.slide(slide_id)
        fp = entry.store.fingerprint
        with _open(record) as slide:
            return int(make_tile_grid_at(slide, [], [], mpp=fp.mpp, tile_px=fp.tile_px).size_l0)


def _open(record: SlideRecord) -> Any:
    if record.path is None or not record.path.is_file():
        raise NotFound(f"the file of slide {record.slide_id!r} is not at its recorded path on this machine")
    return open_slide(record.path, mpp=record.user_mpp)


def read_stored_pixels(entry: StoreEntry, slide_id: str, x: int, y: int) -> np.ndarray:
    """RGB uint8 [tile_px, tile_px, 3] of the stored tile at (x, y), read as extraction read it."""
    record = entry.slide(slide_id)
    fp = entry.store.fingerprint
    try:
        with _open(record) as slide:
            grid = make_tile_grid_at(slide, [x], [y], mpp=fp.mpp, tile_px=fp.tile_px)
            return read_tile(slide, grid, 0)
    except NotFound:
        raise
    except (MvhError, OSError, ValueError) as exc:
        raise SlideError(f"slide {slide_id!r}: tile ({x}, {y}) cannot be read back: {exc}") from exc
