"""Queries end to end on a real-slide store (tiny random-init MV_Hybrid), query preparation, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.errors import CheckpointError, FingerprintMismatchError, StaleIndexError, UsageError
from mvh.extractor.embedder import Embedder
from mvh.extractor.extract import extract_slides
from mvh.extractor.extract_config import ExtractConfig
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import make_tile_grid_at, read_tile
from mvh.index.build import build_index
from mvh.store import EmbeddingStore
from mvh.tasks.query import (
    SearchConfig,
    parse_tile_ref,
    run_query,
    tile_ref_candidates,
)
from mvh.tasks.query_embedder import query_embedder
from mvh.tasks.query_image import prepare_query_image

MODEL = "mv_hybrid_tiny"
CFG = ExtractConfig(MODEL, random_init=True, batch_size=32, workers=0)


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, sample_slide: Path) -> Path:
    """The real slide embedded by the extraction pipeline (mv_hybrid_tiny, random init), Flat index built."""
    uri = tmp_path_factory.mktemp("real") / "store"
    summary = extract_slides([sample_slide], uri, CFG, device="cpu")
    assert summary.count("done") == 1
    build_index(EmbeddingStore.open(uri))
    return uri


@pytest.fixture(scope="module")
def embedder(real_store: Path) -> Embedder:
    return query_embedder(EmbeddingStore.open(real_store), device="cpu")


def cut_tile(store: EmbeddingStore, i: int) -> tuple[dict, np.ndarray]:
    """Row i of the store and its pixels, read from the slide the way extraction reads tiles."""
    rows, _ = store.all_embeddings()
    row = rows.iloc[i].to_dict()
    path = store.slides().set_index("slide_id").loc[row["slide_id"], "path"]
    with open_slide(path) as slide:
        grid = make_tile_grid_at(slide, [row["x"]], [row["y"]], mpp=row["mpp"], tile_px=int(row["tile_px"]))
        return row, read_tile(slide, grid, 0)


@pytest.mark.real_data
def test_tile_cut_from_the_slide_finds_itself_first(
    real_store: Path, embedder: Embedder, tmp_path: Path
) -> None:
    store = EmbeddingStore.open(real_store)
    row, pixels = cut_tile(store, 17)
    path = tmp_path / "query.png"
    Image.fromarray(pixels).save(path)
    result = run_query(real_store, image=path, k=5, query_mpp=0.5, embedder=embedder)
    first = result.hits.iloc[0]
    assert first["tile_id"] == row["tile_id"] and (first["x"], first["y"]) == (row["x"], row["y"])
    assert first["score"] == pytest.approx(1.0, abs=1e-4) and result.hits.iloc[1]["score"] < 0.999
    assert result.notes == []  # a 224 px tile at the store's 0.5 um/px needs no resizing


@pytest.mark.real_data
def test_real_he_tile_returns_k_rows_with_coordinates(
    real_store: Path, embedder: Embedder, he_tile: Path, tmp_path: Path
) -> None:
    store = EmbeddingStore.open(real_store)
    rows, _ = store.all_embeddings()
    stored = set(zip(rows["x"], rows["y"], strict=True))
    montage = tmp_path / "montage.png"
    result = run_query(real_store, image=he_tile, k=7, embedder=embedder, montage=montage)
    hits = result.hits
    assert len(hits) == 7 and list(hits["rank"]) == list(range(1, 8))
    assert {"slide_id", "tile_id", "x", "y", "mpp", "score"} <= set(hits.columns)
    assert all((x, y) in stored for x, y in zip(hits["x"], hits["y"], strict=True))
    assert hits["score"].is_monotonic_decreasing
    assert any("no --query-mpp" in note for note in result.notes)
    with Image.open(montage) as image:  # the query and 7 hits: 6 columns, 2 rows of 224 px + captions
        assert image.size == (6 * 224, 2 * (224 + 30))
    result = run_query(real_store, image=he_tile, k=3, query_mpp=0.25, embedder=embedder)
    assert any("centre 448 px" in note for note in result.notes) and len(result.hits) == 3


@pytest.mark.real_data
def test_query_by_stored_tile_and_by_slide(real_store: Path, tmp_path: Path) -> None:
    store = EmbeddingStore.open(real_store)
    rows, _ = store.all_embeddings()
    row = rows.iloc[5]
    ref = f"{row.slide_id}:{row.x}:{row.y}"
    result = run_query(real_store, tile=ref, k=4, include_self=True, montage=tmp_path / "m.png")
    assert result.hits.iloc[0]["tile_id"] == row.tile_id
    assert result.hits.iloc[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "m.png").exists() and result.query == {
        "kind": "tile", "source": ref, "tile_id": row.tile_id, "n_tiles": 1, "include_self": True
    }
    # By default the query tile is not its own hit; the tile id form names the same tile.
    default = run_query(real_store, tile=row.tile_id, k=4)
    assert default.query["source"] == ref and row.tile_id not in set(default.hits["tile_id"])
    assert default.hits["tile_id"].tolist()[:3] == result.hits["tile_id"].tolist()[1:]
    with pytest.raises(UsageError, match="nearest stored tile"):
        run_query(real_store, tile=f"{row.slide_id}:{row.x + 3}:{row.y}")
    # A slide query excludes the slide itself: with one slide in the store nothing is left.
    result = run_query(real_store, slide=row.slide_id, k=3)
    assert result.slide_level and result.hits.empty and any("excluded" in n for n in result.notes)


@pytest.mark.real_data
def test_stale_index_after_another_slide(real_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(real_store, copy)
    slide = write_synthetic_slide(tmp_path / "extra.tiff", 672, 448, 0.5, tissue_rects=[(0, 0, 672, 448)])
    extract_slides([slide], copy, CFG, device="cpu")
    with pytest.raises(StaleIndexError, match="added \\(extra\\).*mvh index build"):
        run_query(copy, tile="extra:0:0")


def test_fingerprint_mismatch_of_the_query_model_is_refused(tmp_path: Path) -> None:
    base = Embedder(MODEL, random_init=True, device="cpu", seed=0)
    ckpt = tmp_path / "ckpt.pth"
    torch.save(base.model.state_dict(), ckpt)
    fp = Embedder(MODEL, weights=ckpt, device="cpu").fingerprint(0.5, 224)
    store = EmbeddingStore.create(tmp_path / "store", fp)
    assert query_embedder(store, device="cpu").weights_sha256 == fp.weights_sha256
    other = tmp_path / "other.pth"
    torch.save(Embedder(MODEL, random_init=True, device="cpu", seed=1).model.state_dict(), other)
    with pytest.raises(FingerprintMismatchError, match="differ"):
        query_embedder(store, weights=other, device="cpu")
    ckpt.unlink()
    with pytest.raises(CheckpointError, match="pass --weights"):
        query_embedder(store, device="cpu")
    random_store = EmbeddingStore.create(tmp_path / "random", base.fingerprint(0.5, 224))
    with pytest.raises(UsageError, match="random-init"):
        query_embedder(random_store, weights=other, device="cpu")


def test_prepare_query_image_physical_size() -> None:
    image = np.zeros((1000, 1000, 3), dtype=np.uint8)
    image[...] = (0, 0, 255)
    image[276:724, 276:724] = (255, 0, 0)  # the centre 448 px: one store tile at 0.25 um/px
    tile, notes = prepare_query_image(Image.fromarray(image), tile_px=224, mpp=0.5, query_mpp=0.25)
    assert tile.shape == (224, 224, 3) and (tile == (255, 0, 0)).all() and "centre 448 px" in notes[0]
    tile, notes = prepare_query_image(Image.fromarray(image[:300, :200]), tile_px=224, mpp=0.5)
    assert tile.shape == (224, 224, 3) and "centre 200 px square" in notes[0]
    tile, notes = prepare_query_image(Image.fromarray(image[:100, :100]), tile_px=224, mpp=0.5, query_mpp=0.5)
    assert tile.shape == (224, 224, 3) and "upscaled" in notes[0]
    same = np.arange(224 * 224 * 3, dtype=np.uint8).reshape(224, 224, 3)
    tile, notes = prepare_query_image(Image.fromarray(same), tile_px=224, mpp=0.5)
    assert notes == [] and np.array_equal(tile, same)


@pytest.mark.parametrize(("h", "w", "query_mpp"), [(300, 517, None), (1000, 1000, None), (611, 480, 0.3)])
def test_prepare_query_image_is_the_centre_square_resized_bilinear(
    h: int, w: int, query_mpp: float | None
) -> None:
    image = np.random.default_rng(h + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    side = min(h, w) if query_mpp is None else round(224 * 0.5 / query_mpp)
    top, left = (h - side) // 2, (w - side) // 2
    centre = np.ascontiguousarray(image[top : top + side, left : left + side])
    expected = np.asarray(Image.fromarray(centre).resize((224, 224), Image.Resampling.BILINEAR))
    tile, _ = prepare_query_image(Image.fromarray(image), tile_px=224, mpp=0.5, query_mpp=query_mpp)
    assert tile.dtype == np.uint8 and np.array_equal(tile, expected)


def test_parse_tile_ref() -> None:
    assert parse_tile_ref("case:7:A:448:896") == ("case:7:A", 448, 896)
    assert parse_tile_ref("s1:448:896:224") == ("s1", 448, 896)  # a tile id as --json prints it
    assert tile_ref_candidates("s1:448:896:224") == [("s1", 448, 896), ("s1:448", 896, 224)]
    for bad in ("slide:1", "slide:x:2", ":1:2"):
        with pytest.raises(UsageError, match="<slide_id>:<x>:<y>"):
            parse_tile_ref(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of"),
        ({"tile": "s1:0:0", "slide": "s1"}, "exactly one of"),
        ({"tile": "s1:0:0", "k": 0}, "-k must be at least 1"),
        ({"tile": "s1:0:0", "k": True}, "-k must be at least 1"),
        ({"image": Path("q.png"), "query_mpp": float("inf")}, "--query-mpp"),
        ({"image": Path("q.png"), "query_mpp": -0.5}, "--query-mpp"),
        ({"image": Path("q.png"), "include_self": True}, "--include-self"),
        ({"tile": "s1:x"}, "is not <slide_id>:<x>:<y>"),
    ],
)
def test_search_config_validates_itself(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        SearchConfig(store="s.lance", **kwargs)
