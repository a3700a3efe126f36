"""The job behind `mvh tile`: per slide, detect tissue, build the tile grid, write it (and a preview)."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mvh.errors import MvhError, NoTissueError, UsageError
from mvh.extractor.preview import write_preview
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import TileGrid, make_tile_grid, write_tile_grid
from mvh.extractor.tissue import detect_tissue
from mvh.progress import SLIDES, Event, Progress, report
from mvh.store.slide_ids import check_slide_id, path_inside


@dataclass
class TileResult:
    """What tiling one slide gave: the grid and files written, or the error that stopped it."""

    path: Path
    slide_id: str
    grid: TileGrid | None = None
    slide_mpp: float | None = None
    mpp_source: str | None = None
    tissue_fraction: float | None = None
    parquet: Path | None = None
    preview: Path | None = None
    seconds: float = 0.0
    error: MvhError | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly summary."""
        g = self.grid
        return {
            "slide": str(self.path),
            "slide_id": self.slide_id,
            "status": "failed" if self.error else "done",
            "error": str(self.error) if self.error else None,
            "slide_mpp": self.slide_mpp,
            "mpp_source": self.mpp_source,
            "mpp": g.mpp if g else None,
            "tile_px": g.tile_px if g else None,
            "tile_um": g.tile_um if g else None,
            "level": g.level if g else None,
            "size_l0": g.size_l0 if g else None,
            "n_tiles": len(g) if g else 0,
            "tissue_fraction": self.tissue_fraction,
            "parquet": str(self.parquet) if self.parquet else None,
            "preview": str(self.preview) if self.preview else None,
            "seconds": round(self.seconds, 3),
        }


def tile_slides(
    paths: Sequence[Path],
    out: Path,
    mpp: float = 0.5,
    tile_px: int = 224,
    overlap: int = 0,
    min_tissue: float = 0.25,
    slide_mpp: float | None = None,
    preview: bool = False,
    progress: Progress | None = None,
) -> list[TileResult]:
    """Tile each slide into `out/<slide_id>.tiles.parquet` (+ `.preview.png`); a failure is kept per slide."""
    check_tile_options(out, mpp, tile_px, overlap, min_tissue, slide_mpp)
    for p in paths:
        check_slide_id(Path(p).stem, str(p))
    ids = Counter(Path(p).stem for p in paths)
    clashes = sorted(k for k, n in ids.items() if n > 1)
    if clashes:
        raise UsageError(
            f"several slides share the id {clashes[0]!r} (file stem); tile them into separate --out folders"
        )
    results = []
    report(progress, Event.TOTAL, SLIDES, len(paths))
    for path in map(Path, paths):
        start = time.perf_counter()
        result = TileResult(path=path, slide_id=path.stem)
        try:
            with open_slide(path, mpp=slide_mpp) as slide:
                result.slide_mpp, result.mpp_source = slide.mpp, slide.mpp_source
                tissue = detect_tissue(slide)
                result.tissue_fraction = tissue.tissue_fraction
                preview_path = path_inside(out, f"{slide.slide_id}.preview.png")
                try:
                    grid = make_tile_grid(
                        slide, mpp=mpp, tile_px=tile_px, overlap=overlap, min_tissue=min_tissue, tissue=tissue
                    )
                except NoTissueError:
                    if preview:  # the picture shows why no tile reached min_tissue
                        result.preview = write_preview(slide, tissue, None, preview_path)
                    raise
                result.grid = grid
                result.parquet = write_tile_grid(grid, path_inside(out, f"{slide.slide_id}.tiles.parquet"))
                if preview:
                    result.preview = write_preview(slide, tissue, grid, preview_path)
        except MvhError as exc:
            result.error = exc
        result.seconds = time.perf_counter() - start
        results.append(result)
        report(progress, Event.STATUS, SLIDES, 0, result.slide_id)
        report(progress, Event.ADVANCE, SLIDES)
    return results


def check_tile_options(
    out: Path, mpp: float, tile_px: int, overlap: int, min_tissue: float, slide_mpp: float | None
) -> None:
    """UsageError naming the flag when a tiling option is out of range, before any slide is read."""
    for flag, value in (("--mpp", mpp), ("--slide-mpp", slide_mpp)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag} {value} must be a positive, finite number of um/px")
    if tile_px < 1:
        raise UsageError(f"--tile-px {tile_px} must be at least 1")
    if not 0 <= overlap < tile_px:
        raise UsageError(f"--overlap {overlap} must be in [0, {tile_px}) px")
    if not (math.isfinite(min_tissue) and 0.0 <= min_tissue <= 1.0):
        raise UsageError(f"--min-tissue {min_tissue} must be a fraction between 0 and 1")
    if Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"--out {out} is an existing file, not a folder: give a folder path")
