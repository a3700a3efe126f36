"""The query montage PNG: the query, then each hit read back from its slide the way extraction read it
(`make_tile_grid_at` + `read_tile`), captioned with rank, slide, x, y and score.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageOps

from mvh.errors import MvhError, UsageError
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import make_tile_grid_at, read_tile
from mvh.store import EmbeddingStore

log = logging.getLogger(__name__)

_CAPTION_PX = 30
_MONTAGE_COLUMNS = 6


def read_stored_tile(store: EmbeddingStore, slide_id: str, x: int, y: int, mpp: float) -> np.ndarray | None:
    """A stored tile read back from its slide [tile_px, tile_px, 3], or None if the slide is unreadable."""
    rows = store.slides()
    row = rows[rows["slide_id"] == slide_id]
    if row.empty or not isinstance(row.iloc[0]["path"], str) or not Path(row.iloc[0]["path"]).exists():
        return None
    record = row.iloc[0]
    user_mpp = float(record["mpp"]) if record.get("mpp_source") == "user" else None
    try:
        with open_slide(record["path"], mpp=user_mpp) as slide:
            grid = make_tile_grid_at(slide, [x], [y], mpp=mpp, tile_px=store.fingerprint.tile_px)
            return read_tile(slide, grid, 0)
    except (MvhError, OSError, ValueError) as exc:
        log.warning("cannot read tile %s:%d:%d back from %s: %s", slide_id, x, y, record["path"], exc)
        return None


def _cell(image: np.ndarray | None, caption: str, size: int) -> Image.Image:
    cell = Image.new("RGB", (size, size + _CAPTION_PX), "white")
    if image is None:
        cell.paste(Image.new("RGB", (size, size), (200, 200, 200)), (0, 0))
        ImageDraw.Draw(cell).text((8, size // 2), "slide not found", fill="black")
    else:
        cell.paste(ImageOps.pad(Image.fromarray(image), (size, size), color="white"), (0, 0))
    draw = ImageDraw.Draw(cell)
    for i, line in enumerate(caption.split("\n")[:2]):
        draw.text((4, size + 2 + 13 * i), line, fill="black")
    return cell


def write_montage(
    store: EmbeddingStore, query_image: np.ndarray | None, hits: pd.DataFrame, out: Path, query_caption: str
) -> tuple[Path, list[str]]:
    """A PNG grid: the query, then each hit read back from its slide with rank, slide, x, y and score."""
    size = store.fingerprint.tile_px
    cells = [_cell(query_image, query_caption, size)]
    missing = set()
    for hit in hits.itertuples(index=False):
        tile = read_stored_tile(store, hit.slide_id, int(hit.x), int(hit.y), float(hit.mpp))
        if tile is None:
            missing.add(hit.slide_id)
        caption = f"#{hit.rank} {hit.slide_id}\n({hit.x}, {hit.y}) {hit.score:.3f}"
        cells.append(_cell(tile, caption, size))
    columns = min(_MONTAGE_COLUMNS, len(cells))
    rows = (len(cells) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * size, rows * (size + _CAPTION_PX)), "white")
    for i, cell in enumerate(cells):
        sheet.paste(cell, ((i % columns) * size, (i // columns) * (size + _CAPTION_PX)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        sheet.save(out, format="PNG")
    except OSError as exc:
        raise UsageError(f"cannot write montage {out}: {exc}") from exc
    if missing:
        return out, [f"montage: slides not found at their stored paths: {', '.join(sorted(missing))}"]
    return out, []
