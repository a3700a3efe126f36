"""Tiles and search hits as GeoJSON that QuPath imports (File > Import objects), in level-0 px of a slide.

QuPath's conventions (qupath-core `PathObjectTypeAdapters`, v0.4 and later): a FeatureCollection of
Features; `properties.objectType` is "annotation" or "detection"; `properties.classification` is
`{"name", "color": [r, g, b]}`; `properties.measurements` is a name -> number map; coordinates are pixels
of the full-resolution image, origin at its top-left, y down. Every tile is the square of its stored
footprint: level-0 top-left (x, y) and side `size_l0` (e.g. 448 px for 224 px tiles at 0.5 um/px read from
a 0.25 um/px, 40x scan, as TRIDENT's `patch_size_level0`). Exterior rings run counterclockwise in (x, y)
(RFC 7946 section 3.1.6) and are closed.
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mvh.errors import UsageError

HIT_CLASS = {"name": "mvh search hit", "color": [230, 25, 75]}
TILE_CLASS = {"name": "mvh tile", "color": [0, 224, 255]}


def rank_colour(rank: int, n: int) -> list[int]:
    """RGB of hit `rank` among `n` hits of a search: red (rank 1) to blue (rank n), hue 0-240, no wrap."""
    hue = 240.0 * (rank - 1) / (n - 1) if n > 1 else 0.0
    red, green, blue = colorsys.hls_to_rgb(min(max(hue, 0.0), 240.0) / 360.0, 0.5, 0.9)
    return [round(255 * red), round(255 * green), round(255 * blue)]


def square(x: int, y: int, size_l0: int) -> list[list[list[int]]]:
    """Polygon coordinates of the square tile at level-0 (x, y) with side `size_l0`: one closed,
    counterclockwise ring (positive shoelace area in x, y)."""
    x, y, s = int(x), int(y), int(size_l0)
    return [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]]


def footprint_l0(tile_id: str, tile_px: int, mpp: float, slide_mpp: float | None) -> int:
    """The level-0 side of a stored tile: the `size_l0` its id ends with (`slide:x:y:size_l0`, as the
    extractor and `mvh import` name tiles), else round(tile_px * mpp / slide_mpp) as the extractor computes
    it."""
    suffix = str(tile_id).rsplit(":", 1)[-1]
    if str(tile_id).count(":") >= 3 and suffix.isdigit() and int(suffix) > 0:
        return int(suffix)
    if slide_mpp is None or not slide_mpp > 0:
        raise UsageError(f"tile {tile_id}: its slide has no level-0 um/px, so its footprint is unknown")
    return int(round(tile_px * mpp / slide_mpp))


def feature(
    x: int, y: int, size_l0: int, object_type: str, classification: Mapping[str, Any],
    measurements: Mapping[str, float], name: str | None = None, colour: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One QuPath object: the tile square with its type, class, measurements and optional name/colour."""
    properties: dict[str, Any] = {"objectType": object_type, "classification": dict(classification)}
    if name is not None:
        properties["name"] = name
    if colour is not None:
        properties["color"] = [int(c) for c in colour]
    properties["measurements"] = {k: float(v) for k, v in measurements.items()}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square(x, y, size_l0)},
            "properties": properties}


def hit_features(hits: Iterable[Mapping[str, Any]], size_l0: int, n_hits: int) -> list[dict[str, Any]]:
    """Annotations of search hits on one slide (rows with rank, x, y, score), coloured by rank among all
    `n_hits` of the search."""
    return [
        feature(int(h["x"]), int(h["y"]), size_l0, "annotation", HIT_CLASS,
                {"rank": int(h["rank"]), "score": float(h["score"])},
                name=f"#{int(h['rank'])} similarity {float(h['score']):.3f}",
                colour=rank_colour(int(h["rank"]), n_hits))
        for h in hits
    ]


def tile_features(
    xs: Sequence[int], ys: Sequence[int], size_l0: int, tissue_fraction: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """Detections of a slide's stored tile grid (level-0 top-left x, y), with their tissue fraction."""
    fractions = tissue_fraction if tissue_fraction is not None else [None] * len(xs)
    return [
        feature(int(x), int(y), size_l0, "detection", TILE_CLASS,
                {} if f is None or f != f else {"tissue_fraction": float(f)})
        for x, y, f in zip(xs, ys, fractions, strict=True)
    ]


def feature_collection(features: list[dict[str, Any]]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of `features`."""
    return {"type": "FeatureCollection", "features": features}


def write_collection(path: Path, collection: Mapping[str, Any]) -> Path:
    """Write a FeatureCollection as UTF-8 JSON; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: NaN is not JSON, and QuPath would refuse the whole file
    path.write_text(json.dumps(collection, separators=(",", ":"), allow_nan=False), encoding="utf-8")
    return path


def per_slide_paths(path: Path, slide_ids: Sequence[str]) -> dict[str, Path]:
    """Where the hits of each slide go: `path` itself for one slide, else `<stem>.<slide_id>.geojson` beside
    it (slide ids are file names)."""
    path = Path(path)
    if len(slide_ids) == 1:
        return {slide_ids[0]: path}
    return {sid: path.with_name(f"{path.stem}.{sid}{path.suffix or '.geojson'}") for sid in slide_ids}


def hits_by_slide(
    hits: Sequence[Mapping[str, Any]], tile_px: int, mpp: float, slide_mpps: Mapping[str, float | None]
) -> dict[str, dict[str, Any]]:
    """One FeatureCollection of annotations per slide the hits fall on (in order of first appearance);
    each hit is the footprint of its tile (`footprint_l0`), coloured by its rank among all the hits."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for hit in hits:
        sid = str(hit["slide_id"])
        size = footprint_l0(str(hit.get("tile_id") or ""), tile_px, mpp, slide_mpps.get(sid))
        grouped.setdefault(sid, []).extend(hit_features([hit], size, len(hits)))
    return {sid: feature_collection(features) for sid, features in grouped.items()}


def write_search_hits(path: Path, hits: Sequence[Mapping[str, Any]], store_uri: str) -> list[Path]:
    """Write the hits of a search of the store at `store_uri` for QuPath: one file per slide
    (`per_slide_paths`)."""
    from mvh.store import EmbeddingStore

    if not hits:
        raise UsageError(f"the search found no hits: nothing to write to {path}")
    store = EmbeddingStore.open_snapshot(store_uri)
    slides = store.slides()
    slide_mpps = {str(s): (None if m is None or m != m else float(m))
                  for s, m in zip(slides["slide_id"], slides["mpp"], strict=True)}
    fp = store.fingerprint
    collections = hits_by_slide(hits, fp.tile_px, fp.mpp, slide_mpps)
    paths = per_slide_paths(Path(path), list(collections))
    return [write_collection(paths[sid], collection) for sid, collection in collections.items()]
