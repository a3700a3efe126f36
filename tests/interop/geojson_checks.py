"""GeoJSON validity as RFC 7946 and QuPath's importer want it, written out here (no GeoJSON library):
types, closed linear rings of >= 4 finite numeric positions, counterclockwise exterior rings, and QuPath's
objectType / classification {name, color [r, g, b]} / measurements (name -> number) properties."""

from __future__ import annotations

import math
from typing import Any


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def signed_area(ring: list[list[float]]) -> float:
    """Shoelace area of a closed ring in (x, y): positive when it runs counterclockwise."""
    return sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:], strict=False)) / 2


def check_feature_collection(obj: Any, object_type: str) -> list[list[list[float]]]:
    """Assert `obj` is a valid FeatureCollection of QuPath Polygon objects of `object_type`; return the
    exterior rings."""
    assert isinstance(obj, dict) and obj.get("type") == "FeatureCollection", obj
    assert isinstance(obj.get("features"), list)
    rings = []
    for feature in obj["features"]:
        assert feature.get("type") == "Feature"
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon" and isinstance(geometry["coordinates"], list)
        assert len(geometry["coordinates"]) >= 1
        for i, ring in enumerate(geometry["coordinates"]):
            assert len(ring) >= 4, ring
            assert all(isinstance(p, list) and len(p) == 2 and all(_number(c) for c in p) for p in ring), ring
            assert ring[0] == ring[-1], f"ring not closed: {ring}"
            area = signed_area(ring)
            assert (area > 0) if i == 0 else (area < 0), f"ring {i} runs the wrong way: {ring}"
        rings.append(geometry["coordinates"][0])
        props = feature["properties"]
        assert props["objectType"] == object_type
        cls = props["classification"]
        assert isinstance(cls["name"], str) and cls["name"]
        assert len(cls["color"]) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
        assert isinstance(props["measurements"], dict)
        assert all(isinstance(k, str) and _number(v) for k, v in props["measurements"].items())
    return rings


def square_ring(x: int, y: int, side: int) -> list[list[int]]:
    """The counterclockwise closed ring of the square [x, x + side] x [y, y + side], corner by corner."""
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
