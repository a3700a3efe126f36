"""The JSON API against independent expectations: `mvh search --json`, OpenSlide reads, the store's rows."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import openslide
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from mvh.cli import app as cli
from mvh.serve.search import MPP_FIELD
from mvh.store import EmbeddingStore
from tests.serve.conftest import REAL

HIT_KEYS = ("rank", "slide_id", "tile_id", "x", "y", "mpp", "score")
SLIDE_KEYS = ("rank", "slide_id", "score", "n_hits", "tile_id", "x", "y", "tile_score")


def cli_search(args: list[str]) -> dict:
    result = CliRunner().invoke(cli, ["search", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_health_stores_and_slides(app_client: TestClient, serve_store: str) -> None:
    health = app_client.get("/api/health").json()
    assert health["status"] == "ok" and health["stores"] == ["embeddings"]
    stores = app_client.get("/api/stores").json()
    store = EmbeddingStore.open(serve_store)
    assert stores[0]["n_tiles"] == store.n_tiles == 60 and stores[0]["image_queries"] is True
    assert stores[0]["fingerprint"] == store.fingerprint.to_dict()
    info = store.info()
    assert (stores[0]["tags"], stores[0]["versions"]) == (info.tags, info.table_versions)
    slides = app_client.get("/api/stores/embeddings/slides").json()
    rows = [(s["slide_id"], s["status"], s["n_tiles"]) for s in slides]
    assert rows == [(REAL, "done", 54), ("synth", "done", 6)]
    assert all("path" not in s for s in slides)


@pytest.mark.parametrize("extra", [[], ["--query-mpp", "0.25"]])
def test_image_search_equals_mvh_search_json(
    app_client: TestClient, serve_store: str, he_tile: Path, extra: list[str]
) -> None:
    cli_out = cli_search(["--store", serve_store, "--query", str(he_tile), "-k", "7", *extra])
    form = {"k": "7", **({"query_mpp": extra[1]} if extra else {})}
    with he_tile.open("rb") as fh:
        response = app_client.post("/api/search", files={"image": ("he.png", fh, "image/png")}, data=form)
    assert response.status_code == 200, response.text
    out = response.json()
    assert [tuple(h[k] for k in HIT_KEYS) for h in out["hits"]] == [
        tuple(h[k] for k in HIT_KEYS) for h in cli_out["hits"]
    ]
    # the same notes, naming the page's um/px field where the CLI names its option
    assert out["notes"] == [n.replace("--query-mpp", MPP_FIELD) for n in cli_out["notes"]]
    assert out["index"] == cli_out["index"]
    assert bool(extra) or any("has no 'um/px of the image': its centre" in n for n in out["notes"])
    assert all(h["tile_px"] == 224 for h in out["hits"])
    # the query as fed to the model: the centre crop (1000 px without um/px, 448 px at 0.25) resized to 224
    assert out["query"]["image"].startswith("/api/queries/")
    shown = app_client.get(out["query"]["image"])
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/png"
    fed = np.asarray(Image.open(io.BytesIO(shown.content)))
    source = np.asarray(Image.open(he_tile).convert("RGB"))
    side = 448 if extra else 1000
    top = (source.shape[0] - side) // 2
    expected = np.asarray(Image.fromarray(source[top:top + side, top:top + side]).resize(
        (224, 224), Image.Resampling.BILINEAR))
    assert fed.shape == (224, 224, 3) and np.array_equal(fed, expected)


def test_rgba_and_jpeg_uploads_equal_mvh_search_json(
    app_client: TestClient, serve_store: str, he_tile: Path, tmp_path: Path
) -> None:
    # the app hands run_query its own decoding of the upload: it must be the pixels `mvh search` reads
    rgb = np.asarray(Image.open(he_tile).convert("RGB"))[:600, :600]
    alpha = np.tile(np.linspace(0, 255, 600, dtype=np.uint8), (600, 1))[..., None]
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(tmp_path / "q.png")
    Image.fromarray(rgb).save(tmp_path / "q.jpg", quality=80)
    for name in ("q.png", "q.jpg"):
        cli_out = cli_search(["--store", serve_store, "--query", str(tmp_path / name), "-k", "5"])
        with (tmp_path / name).open("rb") as fh:
            out = app_client.post("/api/search", files={"image": (name, fh)}, data={"k": "5"}).json()
        assert [(h["tile_id"], h["score"]) for h in out["hits"]] == [
            (h["tile_id"], h["score"]) for h in cli_out["hits"]
        ], name


def test_tile_and_slide_level_search_equal_mvh_search_json(app_client: TestClient, serve_store: str) -> None:
    ref = f"{REAL}:896:448"
    cli_out = cli_search(["--store", serve_store, "--query-tile", ref, "-k", "5"])
    out = app_client.post("/api/search", json={"tile": ref, "k": 5}).json()
    assert [tuple(h[k] for k in HIT_KEYS) for h in out["hits"]] == [
        tuple(h[k] for k in HIT_KEYS) for h in cli_out["hits"]
    ]
    assert out["query"]["image"] == f"/api/tiles/{REAL}/896/448.jpg?store=embeddings"
    cli_out = cli_search(["--store", serve_store, "--query-tile", ref, "-k", "3", "--include-self"])
    out = app_client.post("/api/search", json={"tile": ref, "k": 3, "include_self": True}).json()
    assert [h["tile_id"] for h in out["hits"]] == [h["tile_id"] for h in cli_out["hits"]]
    assert (out["hits"][0]["x"], out["hits"][0]["y"]) == (896, 448)
    cli_out = cli_search(["--store", serve_store, "--query-tile", ref, "-k", "2", "--slide-level"])
    out = app_client.post("/api/search", json={"tile": ref, "k": 2, "slide_level": True}).json()
    assert out["slide_level"] is True
    assert [tuple(h[k] for k in SLIDE_KEYS) for h in out["hits"]] == [
        tuple(h[k] for k in SLIDE_KEYS) for h in cli_out["hits"]
    ]


def assert_region(jpeg: bytes, slide: Path, xy: tuple[int, int], side: int) -> None:
    """The JPEG shows the slide's level-0 region at `xy`: JPEG-close there, clearly worse 1 px off."""
    got = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64)
    with openslide.OpenSlide(str(slide)) as osr:
        def err(dx: int) -> float:
            region = osr.read_region((xy[0] + dx, xy[1]), 0, (side, side)).convert("RGB")
            want = np.asarray(region, dtype=np.float64)
            assert got.shape == want.shape
            return float(np.abs(got - want).mean())

        here, off = err(0), min(err(-1), err(1))
    assert here < 8.0 and here < 0.6 * off  # JPEG quality 85 costs 5-6 grey levels on this tissue


def test_stored_tile_jpeg_is_the_slide_region(app_client: TestClient, sample_slide: Path) -> None:
    # 0.499 um/px slide, 224 px at 0.5 um/px: level-0 side round(224 * 0.5 / 0.499) = 224, no resize
    response = app_client.get(f"/api/tiles/{REAL}/1120/896.jpg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert_region(response.content, sample_slide, (1120, 896), 224)
    missing = app_client.get(f"/api/tiles/{REAL}/1121/896.jpg")
    assert missing.status_code == 404 and "no stored tile" in missing.json()["detail"]


def test_deepzoom_descriptor_and_tiles(app_client: TestClient, sample_slide: Path) -> None:
    desc = app_client.get(f"/api/dzi/embeddings/{REAL}").json()["Image"]
    assert (desc["Size"]["Width"], desc["Size"]["Height"]) == ("2220", "2967")
    assert desc["TileSize"] == "254" and desc["Overlap"] == "1" and desc["Format"] == "jpeg"
    # top DeepZoom level = level 0 pixels: tile (4, 3) covers x 1015..1270 (overlap 1 each side), y 761..1016
    top = int(np.ceil(np.log2(2967)))
    tiles = app_client.app.state.tiles
    assert tiles.cached_deepzoom("embeddings", REAL, top, 4, 3) is None
    first = app_client.get(f"/api/dzi/embeddings/{REAL}/{top}/4_3.jpeg")
    cached = tiles.cached_deepzoom("embeddings", REAL, top, 4, 3)
    assert cached is not None and cached.data == first.content
    again = app_client.get(f"/api/dzi/embeddings/{REAL}/{top}/4_3.jpeg")
    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert_region(first.content, sample_slide, (1015, 761), 256)
    assert app_client.get(f"/api/dzi/embeddings/{REAL}/{top}/99_0.jpeg").status_code == 404
    assert app_client.get(f"/api/dzi/embeddings/{REAL}/{top + 1}/0_0.jpeg").status_code == 404


def test_tile_grid_and_overlays(app_client: TestClient, serve_store: str, results_dir: Path) -> None:
    grid = app_client.get(f"/api/stores/embeddings/slides/{REAL}/tiles").json()
    tiles = EmbeddingStore.open(serve_store).slide_tiles(REAL)
    assert list(zip(grid["x"], grid["y"], strict=True)) == list(zip(tiles["x"], tiles["y"], strict=True))
    assert grid["size_l0"] == 224
    overlays = app_client.get(f"/api/overlays/embeddings/{REAL}").json()
    layer, st = overlays["layers"]
    written = __import__("pandas").read_csv(results_dir / f"attention_{REAL}.csv")
    assert layer["kind"] == "attention" and layer["anchor"] == "top-left"
    assert layer["x"] == written["x"].tolist() and layer["y"] == written["y"].tolist()
    assert layer["values"]["attention"] == written["attention"].tolist()
    assert app_client.get("/api/overlays/embeddings/synth").json()["layers"] == []
    assert st["kind"] == "st" and st["anchor"] == "centre" and st["channels"] == ["MKI67", "CD3E"]
    assert st["x"] == (tiles["x"].head(20) + 112).tolist()


def test_results_folder_without_per_tile_values_says_so(tmp_path: Path) -> None:
    from mvh.serve.results import read_results_folder

    (tmp_path / "results.json").write_text(json.dumps({"settings": {"heatmap": "s1", "cohort": "c.csv"}}))
    (tmp_path / "predictions_bad.csv").write_text("a,b\n1,2\n")
    folder = read_results_folder(tmp_path, "r0")
    assert folder.task == "survival" and folder.layers == []
    assert any("predictions_bad.csv" in n for n in folder.notes)
    assert any("no per-tile values" in n for n in folder.notes)


def test_st_predictions_long_and_wide(tmp_path: Path) -> None:
    from mvh.serve.results import read_results_folder

    (tmp_path / "results.json").write_text(json.dumps({"settings": {"split": "patient"}}))
    (tmp_path / "predictions_fold0.csv").write_text(
        "sample_id,x,y,gene,predicted\nA,10,20,MKI67,1.5\nA,10,20,CD3E,0.5\nA,30,40,MKI67,2.5\nA,30,40,CD3E,0.0\n"
    )
    [layer] = read_results_folder(tmp_path, "r0").layers
    assert layer.kind == "st" and layer.slide_id == "A" and layer.anchor == "centre"
    assert (layer.x, layer.y) == ([10, 30], [20, 40])
    assert layer.values == {"CD3E": [0.5, 0.0], "MKI67": [1.5, 2.5]}


def test_store_without_its_weights_offers_tile_queries_only(
    serve_store: str, he_tile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from mvh.serve import ServeConfig, create_app

    app = create_app(ServeConfig(stores=[serve_store]))
    entry = app.state.catalog.entries["embeddings"]
    gone = dataclasses.replace(
        entry.store.fingerprint, weights_sha256="ab" * 32, weights_path="/nowhere/teacher_checkpoint.pth"
    )
    monkeypatch.setattr(entry.store, "fingerprint", gone)
    client = TestClient(app)
    [store] = client.get("/api/stores").json()
    assert store["image_queries"] is False
    assert "/nowhere/teacher_checkpoint.pth" in store["image_queries_reason"]
    with he_tile.open("rb") as fh:
        response = client.post("/api/search", files={"image": ("he.png", fh, "image/png")})
    assert response.status_code == 400 and "stored tile" in response.json()["detail"]
    assert client.post("/api/search", json={"tile": f"{REAL}:1120:896", "k": 3}).status_code == 200


def test_tagged_snapshot_is_served_read_only(serve_store: str, tmp_path: Path) -> None:
    import shutil

    from mvh.serve import ServeConfig, create_app

    copy = tmp_path / "copy.lance"
    shutil.copytree(serve_store, copy)
    EmbeddingStore.open(copy).create_tag("v1")
    client = TestClient(create_app(ServeConfig(stores=[f"{copy}@v1", str(copy)])))
    stores = {s["name"]: s for s in client.get("/api/stores").json()}
    assert set(stores) == {"copy-v1", "copy"}
    assert "v1" in stores["copy"]["tags"] and stores["copy-v1"]["opened_as"] == f"{copy}@v1"
    assert app_state_read_only(client) == {"copy-v1": True, "copy": True}
    out = client.post("/api/search", json={"tile": f"{REAL}:1120:896", "k": 3, "store": "copy-v1"})
    assert out.status_code == 200 and len(out.json()["hits"]) == 3


def app_state_read_only(client: TestClient) -> dict[str, bool]:
    """Whether each served store was opened read-only (its location says so)."""
    entries = client.app.state.catalog.entries
    return {name: bool(entry.store.location.read_only) for name, entry in entries.items()}
