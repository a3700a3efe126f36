"""Slide inputs of an extraction: files, folders (slide suffixes or `--glob`) and a slides CSV, resolved,
de-duplicated and given safe, unique ids (`--slide-id-from stem|path`).
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mvh.errors import DataError, UsageError
from mvh.extractor.extract_config import SlideInput
from mvh.store.slide_ids import check_slide_id

SLIDE_SUFFIXES = (
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".svslide",
    ".bif",
    ".tif",
    ".tiff",
    ".dcm",
    ".png",
    ".jpg",
    ".jpeg",
)


def _read_slides_csv(path: Path) -> list[SlideInput]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the slides CSV ({exc}); save it as UTF-8 text") from exc
    if not rows or "path" not in rows[0]:
        raise DataError(f"{path}: the slides CSV needs a `path` column (and optionally `mpp`)")
    out = []
    for i, row in enumerate(rows, start=2):
        cell = row.get("path")
        if not isinstance(cell, str) or not cell.strip() or "\0" in cell:
            raise DataError(f"{path}:{i}: empty or invalid `path` cell; give the slide file of each row")
        slide = Path(cell.strip())
        slide = slide if slide.is_absolute() else path.parent / slide
        mpp = row.get("mpp")
        mpp = mpp.strip() if isinstance(mpp, str) else ""
        try:
            value = float(mpp) if mpp else None
        except ValueError:
            raise DataError(f"{path}:{i}: mpp {mpp!r} is not a number of um/px") from None
        if value is not None and not (math.isfinite(value) and value > 0):
            raise DataError(f"{path}:{i}: mpp {mpp!r} must be a positive number of um/px")
        out.append(SlideInput(slide, value))
    return out


def _path_id(path: Path) -> str:
    """The id of `path` for `--slide-id-from path`: its path relative to the working folder, `/` as `__`."""
    relative = Path(os.path.relpath(path, Path.cwd()))
    if relative.parts and relative.parts[0] == "..":
        raise UsageError(
            f"{path}: --slide-id-from path names slides by their path below the current folder; run mvh "
            "from a folder that contains the slides"
        )
    return "__".join(relative.with_suffix("").parts)


def find_slides(
    inputs: Sequence[Path | str] = (),
    recursive: bool = False,
    glob: str | None = None,
    slides_csv: Path | str | None = None,
    slide_mpp: float | None = None,
    slide_id_from: str = "stem",
) -> list[SlideInput]:
    """Slide files from paths, folders (files matching `glob` or a slide suffix) and a CSV; ids checked."""
    found: list[SlideInput] = []
    for item in map(Path, inputs):
        if item.is_dir():
            candidates = item.rglob(glob or "*") if recursive else item.glob(glob or "*")
            files = sorted(
                p for p in candidates if p.is_file() and (glob or p.suffix.lower() in SLIDE_SUFFIXES)
            )
            found.extend(SlideInput(p, slide_mpp) for p in files)
        elif item.exists():
            found.append(SlideInput(item, slide_mpp))
        else:
            raise UsageError(f"{item}: no such slide file or directory")
    if slides_csv is not None:
        found.extend(_read_slides_csv(Path(slides_csv)))
    return _checked_inputs(found, slide_id_from, [str(p) for p in inputs])


def _checked_inputs(
    found: Sequence[SlideInput], slide_id_from: str, described: list[str]
) -> list[SlideInput]:
    """Resolved, de-duplicated inputs with safe, unique ids (UsageError naming the file otherwise)."""
    unique: list[SlideInput] = []
    for s in dict.fromkeys(SlideInput(s.path.resolve(), s.mpp, s.name) for s in found):
        name = s.name if s.name is not None or slide_id_from == "stem" else _path_id(s.path)
        item = SlideInput(s.path, s.mpp, name)
        check_slide_id(item.slide_id, str(s.path))
        unique.append(item)
    ids = Counter(s.slide_id for s in unique)
    clashes = sorted(k for k, n in ids.items() if n > 1)
    if clashes:
        paths = [str(s.path) for s in unique if s.slide_id == clashes[0]]
        raise UsageError(
            f"slides {paths} share the id {clashes[0]!r}: name slides by their relative path with "
            "--slide-id-from path, or extract them into separate stores"
        )
    if not unique:
        raise UsageError(f"no slides found in {described}: check the paths, --glob or --recursive")
    return unique
