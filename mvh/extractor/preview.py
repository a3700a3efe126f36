"""A picture to check tiling by eye: the slide thumbnail, the tissue mask and the tile grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mvh.extractor.slide import Slide
from mvh.extractor.tiling import TileGrid
from mvh.extractor.tissue import TissueMask

_BACKGROUND_TINT = np.array([40.0, 70.0, 200.0], dtype=np.float32)
_TILE_COLOUR = (20, 170, 60)
_MASK_EDGE = (255, 200, 0)


def render_preview(
    slide: Slide, tissue: TissueMask, grid: TileGrid | None, max_size: int = 1200
) -> np.ndarray:
    """RGB uint8 [h, w, 3]: thumbnail, non-tissue tinted blue, mask outline yellow, tiles outlined green."""
    thumb = slide.thumbnail(max_size)
    h, w = thumb.shape[:2]
    scale_x, scale_y = w / slide.dimensions[0], h / slide.dimensions[1]
    # Map every thumbnail pixel centre to the mask pixel it falls in (both in known level-0 coordinates).
    rows = np.minimum(
        ((np.arange(h) + 0.5) / scale_y / tissue.downsample).astype(np.int64), tissue.shape[0] - 1
    )
    cols = np.minimum(
        ((np.arange(w) + 0.5) / scale_x / tissue.downsample).astype(np.int64), tissue.shape[1] - 1
    )
    mask = tissue.mask[np.ix_(rows, cols)]
    out = thumb.astype(np.float32)
    out[~mask] = 0.55 * out[~mask] + 0.45 * _BACKGROUND_TINT
    edge = mask ^ _eroded(mask)
    out[edge] = _MASK_EDGE
    image = Image.fromarray(out.astype(np.uint8))
    if grid is not None:
        draw = ImageDraw.Draw(image)
        for x, y in zip(grid.x.tolist(), grid.y.tolist(), strict=True):
            box = (
                x * scale_x,
                y * scale_y,
                (x + grid.size_l0) * scale_x - 1,
                (y + grid.size_l0) * scale_y - 1,
            )
            draw.rectangle(box, outline=_TILE_COLOUR, width=1)
    return np.asarray(image)


def _eroded(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, mode="edge")
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def write_preview(
    slide: Slide, tissue: TissueMask, grid: TileGrid | None, path: str | Path, max_size: int = 1200
) -> Path:
    """Write `render_preview` as a PNG; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_preview(slide, tissue, grid, max_size)).save(path)
    return path
