"""Per-slide routes against OpenSlide read directly and the store's own rows; GeoJSON against footprints."""

from __future__ import annotations

import io
import json
from pathlib import Path

import openslide
from fastapi.testclient import TestClient
from PIL import Image

from mvh.store import EmbeddingStore
from tests.interop.geojson_checks import check_feature_collection, square_ring
from tests.serve.conftest import REAL

BASE = f"/api/stores/embeddings/slides/{REAL}"


def test_metadata_is_the_files_openslide_properties(
    app_client: TestClient, serve_store: str, sample_slide: Path
) -> None:
    meta = app_client.get(f"{BASE}/metadata").json()
    props = openslide.OpenSlide(str(sample_slide)).properties
    assert meta["scanner"] == f"{props['openslide.vendor']} {props['aperio.ScanScope ID']}"
    assert meta["objective_power"] == float(props["openslide.objective-power"]) == 20
    assert meta["mpp_x"] == float(props["openslide.mpp-x"])
    slides = EmbeddingStore.open(serve_store).slides().set_index("slide_id")
    assert meta["file_hash"] == slides.loc[REAL, "file_hash"] and meta["mpp"] == slides.loc[REAL, "mpp"]
    assert meta["associated"] == ["label", "macro", "thumbnail"]
    synth = app_client.get("/api/stores/embeddings/slides/synth/metadata").json()
    assert synth["associated"] == [] and synth["objective_power"] is None


def test_label_and_thumbnail_images(app_client: TestClient, sample_slide: Path) -> None:
    slide = openslide.OpenSlide(str(sample_slide))
    label = app_client.get(f"{BASE}/associated/label.jpg")
    assert label.status_code == 200 and label.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(label.content)).size == slide.associated_images["label"].size
    thumb = Image.open(io.BytesIO(app_client.get(f"{BASE}/thumbnail.jpg").content))
    assert thumb.size == slide.get_thumbnail((256, 256)).size
    for name in ("secret", "..", "label.jpg%00"):
        assert app_client.get(f"{BASE}/associated/{name}.jpg").status_code == 404
    assert app_client.get("/api/stores/embeddings/slides/synth/associated/label.jpg").status_code == 404


def test_tile_grid_geojson_is_the_stored_footprints(app_client: TestClient, serve_store: str) -> None:
    response = app_client.get(f"{BASE}/tiles.geojson")
    assert response.headers["content-type"] == "application/geo+json"
    assert f"{REAL}.tiles.geojson" in response.headers["content-disposition"]
    tiles = EmbeddingStore.open(serve_store).slide_tiles(REAL)
    side = round(224 * 0.5 / 0.499)  # the extractor's size_l0 on the 0.499 um/px scan
    rings = check_feature_collection(json.loads(response.content), "detection")
    want = [square_ring(x, y, side) for x, y in zip(tiles.x, tiles.y, strict=True)]
    assert sorted(map(str, rings)) == sorted(map(str, want))


def test_hits_geojson_and_search_hits_carry_file_hash(app_client: TestClient, serve_store: str) -> None:
    tile = EmbeddingStore.open(serve_store).slide_tiles(REAL).iloc[3]
    found = app_client.post("/api/search", json={"tile": f"{REAL}:{tile.x}:{tile.y}", "k": 5}).json()
    slides = EmbeddingStore.open(serve_store).slides().set_index("slide_id")
    assert all(h["file_hash"] == slides.loc[h["slide_id"], "file_hash"] for h in found["hits"])
    mine = [h for h in found["hits"] if h["slide_id"] == REAL]
    body = {"hits": [{k: h[k] for k in ("rank", "x", "y", "score")} for h in mine], "n_hits": 5}
    response = app_client.post(f"{BASE}/hits.geojson", json=body)
    assert response.status_code == 200, response.text
    collection = json.loads(response.content)
    rings = check_feature_collection(collection, "annotation")
    assert rings == [square_ring(h["x"], h["y"], 224) for h in mine]
    ranks = [f["properties"]["measurements"]["rank"] for f in collection["features"]]
    assert ranks == [h["rank"] for h in mine]
    body["hits"][0]["x"] += 1  # not a stored tile
    assert app_client.post(f"{BASE}/hits.geojson", json=body).status_code == 404


def test_stores_say_where_they_live(app_client: TestClient, serve_store: str) -> None:
    store = app_client.get("/api/stores").json()[0]
    assert store["location"] == {"kind": "local", "uri": store["uri"], "tag": None, "pinned_version": None}
