"""Slide ids are file names and table keys: one check that they cannot escape an output folder.

A slide id comes from file stems, h5 attributes, CSV cells and sample names, and becomes `OUT/<id>.h5`,
`<id>.tiles.parquet` and tile ids `"{slide_id}:{x}:{y}:{size}"`. Every entry point validates it here, and
every writer resolves its output through `path_inside`.
"""

from __future__ import annotations

from pathlib import Path

from mvh.errors import UsageError


def check_slide_id(slide_id: object, source: str) -> str:
    """Return `slide_id` if it is a safe single path component; else raise naming `source` (a file/flag)."""
    if not isinstance(slide_id, str) or not slide_id.strip():
        raise UsageError(f"{source}: slide id {slide_id!r} is empty or not text; give each slide a name")
    bad = None
    if any(ord(c) < 32 or ord(c) == 127 for c in slide_id):
        bad = "a control character"
    elif "/" in slide_id or "\\" in slide_id:
        bad = "a path separator"
    elif slide_id in (".", ".."):
        bad = "a relative path component"
    elif slide_id != slide_id.strip():
        bad = "leading or trailing white space"
    if bad is not None:
        raise UsageError(
            f"{source}: slide id {slide_id!r} contains {bad}; rename the slide (ids are file names)"
        )
    return slide_id


def path_inside(folder: Path, name: str) -> Path:
    """`folder / name`, refused unless it resolves inside `folder` (no traversal, no absolute names)."""
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if target.parent != root and root not in target.parents:
        raise UsageError(f"{name!r} would be written outside {folder}; rename the slide")
    return target
