"""What an imported slide keeps so that an export writes its file back exactly.

`kept_attrs` (at import) stores every attribute of `features`, `coords` and the file, both dataset dtypes,
the file's row order and the geometry in the slide's `slide_attrs` JSON; `saved_attrs` and
`to_file_order` (at export) read them back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mvh.errors import StoreError
from mvh.interop.trident import Geometry, H5Slide, encode_attrs
from mvh.store.schema import SLIDE_ATTRS as ATTRS


def file_order(x: np.ndarray, y: np.ndarray, tile_ids: list[str]) -> str | list[int] | None:
    """How the file's rows map onto the store's (y, x, tile_id) order: None (same), col-major, or a list."""
    ids = np.asarray(tile_ids, dtype=object).astype(str)
    by_row = np.lexsort((ids, x, y))
    if np.array_equal(by_row, np.arange(len(x))):
        return None
    if np.array_equal(np.lexsort((ids, y, x)), np.arange(len(x))):
        return "col-major"
    return by_row.tolist()


def kept_attrs(slide: H5Slide, geometry: Geometry, order: Any, note: Callable[[str], None]) -> dict[str, Any]:
    """What a slide imported from `slide` keeps: every attribute, both dtypes, the row order, the geometry."""
    encoded: dict[str, Any] = {}
    for where, attrs in (
        ("coords", slide.coords_attrs),
        ("features", slide.features_attrs),
        ("file", slide.file_attrs),
    ):
        encoded[where], skipped = encode_attrs(attrs)
        if skipped:
            note(f"{slide.path}: {where} attributes {skipped} have types mvh cannot keep (not exported)")
    out = {
        "format": "h5",
        "file": slide.path.name,
        "h5": encoded,
        "dtypes": slide.dtypes,
        "order": order,
        "geometry": {
            "patch_size": geometry.tile_px,
            "patch_size_level0": geometry.size_l0,
            "mpp": geometry.mpp,
            "slide_mpp": geometry.slide_mpp,
            "overlap": geometry.overlap,
            "sources": geometry.sources,
        },
    }
    if slide.empty:
        out["features_shape"] = list(slide.features_shape)
    return out


def saved_attrs(rec: pd.Series) -> dict[str, Any] | None:
    """What `kept_attrs` saved for a slides row (None for a slide mvh tiled itself)."""
    raw = rec.get(ATTRS)
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or raw == "":
        return None
    try:
        saved = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StoreError(f"slide {rec.name}: its `{ATTRS}` column is not JSON ({exc}); re-import it") from exc
    return saved if isinstance(saved, dict) and saved.get("format") == "h5" else None


def to_file_order(order: Any, tiles: pd.DataFrame) -> np.ndarray | None:
    """The permutation that puts the store's tile rows back in the file's order (None: same order)."""
    if order is None:
        return None
    if order == "col-major":
        ids = tiles["tile_id"].to_numpy(dtype=object).astype(str)
        return np.lexsort((ids, tiles["y"].to_numpy(), tiles["x"].to_numpy()))
    return np.argsort(np.asarray(order, dtype=np.int64), kind="stable")
