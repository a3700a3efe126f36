"""QuPath GeoJSON: hits and tile grids are exactly their level-0 footprints (20x, and TRIDENT's geometry of
40x scans)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mvh.cli import app as cli
from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.extractor.extract import extract_slides
from mvh.extractor.extract_config import ExtractConfig, SlideInput
from mvh.index.vector import build_index
from mvh.interop.geojson import footprint_l0, hits_by_slide, per_slide_paths, rank_colour, tile_features
from mvh.store import EmbeddingStore
from tests.interop.geojson_checks import check_feature_collection, signed_area, square_ring


def test_square_tiles_are_closed_counterclockwise_rings() -> None:
    collection = {"type": "FeatureCollection", "features": tile_features([0, 448], [896, 0], 448, [1.0, 0.5])}
    rings = check_feature_collection(json.loads(json.dumps(collection)), "detection")
    assert rings == [square_ring(0, 896, 448), square_ring(448, 0, 448)]
    assert signed_area(rings[0]) == 448 * 448


def test_rank_colours_run_red_to_blue_without_wrapping() -> None:
    # hsl(h, 90%, 50%) by the CSS formula: max = 0.95, min = 0.05 of 255
    assert rank_colour(1, 8) == [242, 13, 13]
    assert rank_colour(8, 8) == [13, 13, 242]
    assert rank_colour(1, 1) == [242, 13, 13]
    blues = [rank_colour(r, 8)[2] for r in range(1, 9)]
    reds = [rank_colour(r, 8)[0] for r in range(5, 9)]
    assert blues == sorted(blues) and reds == sorted(reds, reverse=True)  # no return to red at the end


@pytest.mark.parametrize(
    ("tile_id", "slide_mpp", "expected"),
    [
        ("s:0:0:448", None, 448),  # the extractor's name carries the footprint
        ("s-imported-7", 0.25, 448),  # TRIDENT: patch_size * level0_mag // target_mag = 224 * 40 // 20
        ("s-imported-7", 0.5, 224),  # 20x: 224 * 20 // 20
        ("s-imported-7", 0.499, 224),  # the real CMU slide: round(224 * 0.5 / 0.499)
    ],
)
def test_footprint(tile_id: str, slide_mpp: float | None, expected: int) -> None:
    assert footprint_l0(tile_id, 224, 0.5, slide_mpp) == expected


def test_hits_over_several_slides_go_one_file_per_slide(tmp_path: Path) -> None:
    hits = [{"rank": 1, "slide_id": "a", "tile_id": "a:0:0:448", "x": 0, "y": 0, "score": 0.9},
            {"rank": 2, "slide_id": "b", "tile_id": "b:224:0:224", "x": 224, "y": 0, "score": 0.8},
            {"rank": 3, "slide_id": "a", "tile_id": "a:448:0:448", "x": 448, "y": 0, "score": 0.7}]
    by_slide = hits_by_slide(hits, 224, 0.5, {})
    assert check_feature_collection(by_slide["a"], "annotation") == [square_ring(0, 0, 448),
                                                                     square_ring(448, 0, 448)]
    assert check_feature_collection(by_slide["b"], "annotation") == [square_ring(224, 0, 224)]
    third = by_slide["a"]["features"][1]["properties"]
    assert third["measurements"] == {"rank": 3.0, "score": 0.7} and third["color"] == rank_colour(3, 3)
    assert per_slide_paths(tmp_path / "hits.geojson", ["a", "b"]) == {
        "a": tmp_path / "hits.a.geojson", "b": tmp_path / "hits.b.geojson"}
    assert per_slide_paths(tmp_path / "hits.geojson", ["a"]) == {"a": tmp_path / "hits.geojson"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two stores of synthetic slides at 0.5 um/px tiles: one scanned at 40x (0.25 um/px), one at 20x."""
    folder = tmp_path_factory.mktemp("geojson")
    cfg = ExtractConfig("mv_hybrid_tiny", random_init=True, batch_size=32, workers=0)
    out = {}
    for name, slide_mpp, side in (("x40", 0.25, 1792), ("x20", 0.5, 896)):
        slides = [write_synthetic_slide(folder / f"{name}_{i}.tiff", side, side, slide_mpp,
                                        tissue_rects=[(0, 0, side, side // 2)], seed=i) for i in (1, 2)]
        uri = str(folder / f"{name}.lance")
        extract_slides([SlideInput(p) for p in slides], uri, cfg, device="cpu")
        build_index(EmbeddingStore.open(uri))
        out[name] = uri
    return out


@pytest.mark.parametrize(("name", "size_l0"), [("x40", 448), ("x20", 224)])
def test_search_geojson_is_the_hits_footprints(
    stores: dict[str, str], tmp_path: Path, name: str, size_l0: int
) -> None:
    store = stores[name]
    first = EmbeddingStore.open(store).slide_tiles(f"{name}_1").iloc[0]
    target = tmp_path / "hits.geojson"
    args = ["search", "--store", store, "--query-tile", f"{name}_1:{first.x}:{first.y}", "-k", "6",
            "--geojson", str(target)]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    slides = sorted({h["slide_id"] for h in hits})
    files = per_slide_paths(target, list(dict.fromkeys(h["slide_id"] for h in hits)))
    assert sorted(files) == slides and all(p.is_file() for p in files.values())
    for sid, path in files.items():
        mine = [h for h in hits if h["slide_id"] == sid]
        collection = json.loads(path.read_text())
        rings = check_feature_collection(collection, "annotation")
        assert rings == [square_ring(h["x"], h["y"], size_l0) for h in mine]
        assert [f["properties"]["measurements"] for f in collection["features"]] == [
            {"rank": float(h["rank"]), "score": h["score"]} for h in mine]


@pytest.mark.parametrize(("name", "size_l0"), [("x40", 448), ("x20", 224)])
def test_export_geojson_is_each_slides_tile_grid(
    stores: dict[str, str], tmp_path: Path, name: str, size_l0: int
) -> None:
    import h5py

    store = stores[name]
    for fmt in ("geojson", "h5"):
        result = CliRunner().invoke(cli, ["export", "--store", store, "--format", fmt, "--out",
                                          str(tmp_path / fmt), "--json"])
        assert result.exit_code == 0, result.output
    opened = EmbeddingStore.open(store)
    for sid in opened.slide_ids("done"):
        tiles = opened.slide_tiles(sid)
        collection = json.loads((tmp_path / "geojson" / f"{sid}.geojson").read_text())
        rings = check_feature_collection(collection, "detection")
        with h5py.File(tmp_path / "h5" / f"{sid}.h5", "r") as h5:  # TRIDENT's own footprint attribute
            assert int(h5["coords"].attrs["patch_size_level0"]) == size_l0
        assert rings == [square_ring(x, y, size_l0) for x, y in zip(tiles.x, tiles.y, strict=True)]
        assert [f["properties"]["measurements"]["tissue_fraction"] for f in collection["features"]] == [
            pytest.approx(v) for v in tiles.tissue_fraction]
