"""Tile grids at an exact physical resolution, and reading their tiles.

A tile of `tile_px` px at `mpp` um/px covers `tile_px * mpp` um (224 px at 0.5 um/px = 112 um, the HEST
convention) whatever the scanner: its footprint in level-0 pixels is `size_l0 = round(tile_px * mpp /
slide.mpp)` (off by less than half a level-0 pixel). Tiles are read at the pyramid level with the
largest downsample whose um/px is still <= the target, `read_px = round(size_l0 / downsample)` px there,
and resized to `tile_px` (no magnification buckets).

Grid order is row-major from the slide's top-left (y, then x), tile coordinates are level-0 pixels of
the top-left corner, and `tile_id = f"{slide_id}:{x}:{y}:{size_l0}"` names the same region of the same
slide in every run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mvh.errors import DataError, NoTissueError, UsageError
from mvh.extractor.slide import Slide
from mvh.extractor.tissue import TissueMask, detect_tissue

_LEVEL_TOLERANCE = 1e-3  # relative: OpenSlide's downsamples are estimates (4.0003 for 4)
_PARQUET_KEY = b"mvh.tile_grid"


def tile_id(slide_id: str, x: int, y: int, size_l0: int) -> str:
    """The stable name of a tile: slide id, level-0 top-left x and y, and footprint in level-0 px."""
    return f"{slide_id}:{x}:{y}:{size_l0}"


@dataclass
class TileGrid:
    """Tiles of one slide at `mpp` um/px and `tile_px` px; coordinates are level-0 top-left pixels."""

    slide_path: str
    slide_id: str
    slide_mpp: float
    mpp_source: str
    mpp: float
    tile_px: int
    overlap: int
    level: int
    level_downsample: float
    read_px: int
    size_l0: int
    x: np.ndarray
    y: np.ndarray
    tissue_fraction: np.ndarray
    tile_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.int64)
        self.y = np.asarray(self.y, dtype=np.int64)
        self.tissue_fraction = np.asarray(self.tissue_fraction, dtype=np.float32)
        if not self.tile_ids:
            self.tile_ids = [
                tile_id(self.slide_id, int(a), int(b), self.size_l0)
                for a, b in zip(self.x, self.y, strict=True)
            ]
        n = len(self.x)
        if not (len(self.y) == len(self.tissue_fraction) == len(self.tile_ids) == n):
            raise ValueError("x, y, tissue_fraction and tile_ids must have the same length")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def tile_um(self) -> float:
        """Physical side of a tile in um (tile_px * mpp)."""
        return self.tile_px * self.mpp

    def meta(self) -> dict[str, object]:
        """The grid's scalar fields (everything except the per-tile arrays)."""
        return {
            "slide_path": self.slide_path,
            "slide_id": self.slide_id,
            "slide_mpp": self.slide_mpp,
            "mpp_source": self.mpp_source,
            "mpp": self.mpp,
            "tile_px": self.tile_px,
            "overlap": self.overlap,
            "level": self.level,
            "level_downsample": self.level_downsample,
            "read_px": self.read_px,
            "size_l0": self.size_l0,
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per tile: tile_id, slide_id, x, y, size_l0, tile_px, mpp, level, tissue_fraction."""
        n = len(self)
        return pd.DataFrame(
            {
                "tile_id": pd.Series(self.tile_ids, dtype=object),
                "slide_id": pd.Series([self.slide_id] * n, dtype=object),
                "x": self.x,
                "y": self.y,
                "size_l0": np.full(n, self.size_l0, dtype=np.int64),
                "tile_px": np.full(n, self.tile_px, dtype=np.int64),
                "mpp": np.full(n, self.mpp, dtype=np.float64),
                "level": np.full(n, self.level, dtype=np.int64),
                "tissue_fraction": self.tissue_fraction,
            }
        )

    def subset(self, index: Sequence[int] | np.ndarray) -> TileGrid:
        """A grid of the tiles at `index` (same geometry)."""
        idx = np.asarray(index, dtype=np.int64)
        return TileGrid(
            **self.meta(),  # type: ignore[arg-type]
            x=self.x[idx],
            y=self.y[idx],
            tissue_fraction=self.tissue_fraction[idx],
            tile_ids=[self.tile_ids[i] for i in idx],
        )


def choose_level(slide: Slide, mpp: float) -> int:
    """The level with the largest downsample whose um/px is still <= `mpp` (level 0 if none is)."""
    best = 0
    for level in range(slide.level_count):
        if slide.level_mpp(level) <= mpp * (1 + _LEVEL_TOLERANCE):
            if slide.level_downsamples[level] > slide.level_downsamples[best]:
                best = level
    return best


def _geometry(slide: Slide, mpp: float, tile_px: int) -> tuple[int, int, float, int]:
    """(size_l0, level, level_downsample, read_px) for tiles of `tile_px` px at `mpp` um/px."""
    if not (math.isfinite(mpp) and mpp > 0 and tile_px > 0):
        raise UsageError(
            f"{slide.path}: --mpp and --tile-px must be positive and finite (got {mpp}, {tile_px})"
        )
    size_l0 = round(tile_px * mpp / slide.mpp)
    if size_l0 < 1:
        raise UsageError(f"{slide.path}: a {tile_px} px tile at {mpp} um/px is under one pixel of this slide")
    level = choose_level(slide, mpp)
    downsample = slide.level_downsamples[level]
    return size_l0, level, downsample, max(1, round(size_l0 / downsample))


def make_tile_grid(
    slide: Slide,
    mpp: float = 0.5,
    tile_px: int = 224,
    overlap: int = 0,
    min_tissue: float = 0.25,
    tissue: TissueMask | None = None,
) -> TileGrid:
    """Tiles fully inside the slide whose tissue fraction reaches `min_tissue` (NoTissueError if none).

    `overlap` is in output pixels (at `mpp`); the stride is `size_l0 - round(overlap * mpp / slide.mpp)`.
    """
    size_l0, level, downsample, read_px = _geometry(slide, mpp, tile_px)
    if not 0 <= overlap < tile_px:
        raise UsageError(f"{slide.path}: --overlap must be in [0, {tile_px}) px, got {overlap}")
    stride = max(1, size_l0 - round(overlap * mpp / slide.mpp))
    width, height = slide.dimensions
    xs = np.arange(0, width - size_l0 + 1, stride, dtype=np.int64)
    ys = np.arange(0, height - size_l0 + 1, stride, dtype=np.int64)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    x, y = gx.ravel(), gy.ravel()
    mask = tissue if tissue is not None else detect_tissue(slide)
    fraction = mask.fraction_in(x, y, size_l0)
    keep = fraction >= min_tissue
    if not keep.any():
        raise NoTissueError(
            f"{slide.path}: no {tile_px} px tile at {mpp} um/px has >= {min_tissue:.0%} tissue "
            f"({len(x)} candidate tiles); lower --min-tissue or check the slide"
        )
    return TileGrid(
        slide_path=str(slide.path),
        slide_id=slide.slide_id,
        slide_mpp=slide.mpp,
        mpp_source=slide.mpp_source,
        mpp=float(mpp),
        tile_px=int(tile_px),
        overlap=int(overlap),
        level=level,
        level_downsample=float(downsample),
        read_px=read_px,
        size_l0=size_l0,
        x=x[keep],
        y=y[keep],
        tissue_fraction=fraction[keep],
    )


def make_tile_grid_at(
    slide: Slide,
    x: Sequence[int] | np.ndarray,
    y: Sequence[int] | np.ndarray,
    mpp: float = 0.5,
    tile_px: int = 224,
    tile_ids: Sequence[str] | None = None,
    tissue: TissueMask | None = None,
) -> TileGrid:
    """A grid at given level-0 top-left coordinates (tissue fraction NaN unless `tissue` is given)."""
    size_l0, level, downsample, read_px = _geometry(slide, mpp, tile_px)
    xa = np.rint(np.asarray(x, dtype=np.float64)).astype(np.int64)
    ya = np.rint(np.asarray(y, dtype=np.float64)).astype(np.int64)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {xa.shape} and {ya.shape}")
    if tile_ids is not None and len(tile_ids) != len(xa):
        raise ValueError(f"{len(tile_ids)} tile_ids for {len(xa)} coordinates")
    fraction = tissue.fraction_in(xa, ya, size_l0) if tissue is not None else np.full(len(xa), np.nan)
    return TileGrid(
        slide_path=str(slide.path),
        slide_id=slide.slide_id,
        slide_mpp=slide.mpp,
        mpp_source=slide.mpp_source,
        mpp=float(mpp),
        tile_px=int(tile_px),
        overlap=0,
        level=level,
        level_downsample=float(downsample),
        read_px=read_px,
        size_l0=size_l0,
        x=xa,
        y=ya,
        tissue_fraction=fraction,
        tile_ids=list(tile_ids) if tile_ids is not None else [],
    )


def read_tile(slide: Slide, grid: TileGrid, i: int) -> np.ndarray:
    """Tile `i` of `grid` as RGB uint8 [tile_px, tile_px, 3] (read at grid.level, resized)."""
    region = slide.read_region((int(grid.x[i]), int(grid.y[i])), grid.level, (grid.read_px, grid.read_px))
    if grid.read_px == grid.tile_px:
        return region
    image = Image.fromarray(region).resize((grid.tile_px, grid.tile_px), Image.Resampling.BILINEAR)
    return np.array(image)  # a writable copy: DataLoader's collate turns it into a tensor


def write_tile_grid(grid: TileGrid, path: str | Path) -> Path:
    """Write a grid as Parquet (rows = `to_frame()`, the grid's geometry in the schema metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(grid.to_frame(), preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[_PARQUET_KEY] = json.dumps(grid.meta()).encode()
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def read_tile_grid(path: str | Path) -> TileGrid:
    """Read a grid written by `write_tile_grid`."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(
            f"{path}: not a readable Parquet tile grid ({exc}); rewrite it with `mvh tile`"
        ) from exc
    raw = (table.schema.metadata or {}).get(_PARQUET_KEY)
    if raw is None:
        raise DataError(f"{path}: Parquet file without mvh grid metadata; rewrite it with `mvh tile`")
    frame = table.to_pandas()  # one slide's grid: thousands of rows of coordinates, no embeddings
    return TileGrid(
        **json.loads(raw),
        x=frame["x"].to_numpy(),
        y=frame["y"].to_numpy(),
        tissue_fraction=frame["tissue_fraction"].to_numpy(),
        tile_ids=frame["tile_id"].tolist(),
    )
