"""FAISS indexes over the store: exactness of Flat, recall of the approximate kinds, stale detection."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

from mvh.core.synthetic_embeddings import clustered_embeddings
from mvh.errors import IndexNotFoundError, StaleIndexError, UsageError
from mvh.index.index_cache import index_dir
from mvh.index.params import IndexParams
from mvh.index.row_parts import FrameRows
from mvh.index.vector import (
    FLAT_MAX_TILES,
    HIT_COLUMNS,
    auto_params,
    build_faiss_index,
    build_index,
    exact_search,
    index_info,
    load_index,
    recall_at_k,
    search,
    search_slides,
)
from mvh.store import EmbeddingStore
from tests.conftest import synthetic_fingerprint

DIM = 32


@pytest.fixture(autouse=True, scope="module")
def _faiss_single_thread():
    """FAISS's OpenMP training loops crawl when the few test cores are oversubscribed: use one thread."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def numpy_topk(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: full cosine matrix in float64, stable sort."""
    dbn = db / np.linalg.norm(db, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = qn.astype(np.float64) @ dbn.astype(np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def make_store(tmp_path: Path, name: str = "store") -> EmbeddingStore:
    fp = synthetic_fingerprint(DIM)
    return EmbeddingStore.create(tmp_path / name, fp)


def add_slide(store: EmbeddingStore, slide_id: str, emb: np.ndarray) -> pd.DataFrame:
    n = len(emb)
    xs = (np.arange(n) % 10) * 448
    ys = (np.arange(n) // 10) * 448
    tiles = pd.DataFrame(
        {
            "tile_id": [f"{slide_id}:{x}:{y}:448" for x, y in zip(xs, ys, strict=True)],
            "x": xs, "y": ys, "tile_px": 224, "mpp": 0.5, "tissue_fraction": 1.0,
        }
    )
    store.add_slide({"slide_id": slide_id, "path": f"/nowhere/{slide_id}.svs", "mpp": 0.25}, tiles, emb)
    return tiles


@pytest.fixture
def store3(tmp_path: Path) -> tuple[EmbeddingStore, dict[str, np.ndarray]]:
    """A store of three slides; slide B's tiles are small perturbations of slide A's."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((30, DIM)).astype(np.float32)
    embs = {
        "A": a,
        "B": (a + 0.05 * rng.standard_normal(a.shape)).astype(np.float32),
        "C": rng.standard_normal((25, DIM)).astype(np.float32),
    }
    store = make_store(tmp_path)
    for slide_id, emb in embs.items():
        add_slide(store, slide_id, emb)
    return store, embs


def test_flat_equals_numpy_brute_force() -> None:
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 3, (3000, 1)).astype(np.float32)
    db = rng.standard_normal((3000, 64)).astype(np.float32) * scale
    queries = rng.standard_normal((40, 64)).astype(np.float32)
    ref_scores, ref_ids = numpy_topk(db, queries, 10)
    index = build_faiss_index(db, auto_params(len(db), 64))
    unit = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True))
    scores, ids = index.search(unit, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    ex_scores, ex_ids = exact_search(db, queries, 10)
    np.testing.assert_array_equal(ex_ids, ref_ids)
    np.testing.assert_allclose(ex_scores, ref_scores, atol=1e-5)


def test_exact_search_allowed_mask_and_short_database() -> None:
    rng = np.random.default_rng(2)
    db = rng.standard_normal((50, 8)).astype(np.float32)
    allowed = np.zeros(50, dtype=bool)
    allowed[[3, 7, 20]] = True
    scores, ids = exact_search(db, db[[3]], 5, allowed=allowed)
    assert ids[0, 0] == 3 and scores[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert set(ids[0, :3]) == {3, 7, 20}
    assert (ids[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()


def test_exact_search_in_query_blocks_matches_a_full_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    """With blocks of 3 queries (a 64-entry block over 20 rows; a partial last block), the top-k equals
    a full sort of every query's cosines, groups and self-exclusion applied."""
    from mvh.index import exact

    rng = np.random.default_rng(5)
    db = rng.standard_normal((20, 6))
    groups = np.arange(20) % 4
    monkeypatch.setattr(exact, "_EXACT_BLOCK", 64)
    scores, ids = exact_search(db, db, 4, exclude_rows=np.arange(20), query_groups=groups,
                               database_groups=groups)
    unit = db / np.linalg.norm(db, axis=1, keepdims=True)
    for q in range(20):
        candidates = [r for r in range(20) if groups[r] != groups[q]]
        cosines = unit[candidates] @ unit[q]
        best = [candidates[i] for i in np.argsort(-cosines, kind="stable")[:4]]
        assert ids[q].tolist() == best
        np.testing.assert_allclose(scores[q], np.sort(cosines)[::-1][:4], atol=1e-6)


def test_recall_at_k_hand_example() -> None:
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[3, 2, 9], [-1, -1, -1]])
    assert recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert recall_at_k(approx, exact, 1) == pytest.approx(0.0)
    # Fewer than k qualifying rows: the denominator is the number of exact neighbours.
    assert recall_at_k(np.array([[7, 5, -1]]), np.array([[5, 7, -1]]), 3) == 1.0


def test_auto_params_thresholds() -> None:
    assert auto_params(FLAT_MAX_TILES, 768).kind == "flat"
    p = auto_params(FLAT_MAX_TILES + 1, 768)
    assert p.kind == "ivfpq" and p.refine == "stored" and p.coarse == "hnsw"
    assert p.factory_string() == f"IVF{p.nlist}_HNSW32,PQ96x4fs"
    assert p.nlist & (p.nlist - 1) == 0 and 39 * p.nlist <= FLAT_MAX_TILES + 1 and p.nprobe >= 8
    assert auto_params(10_000_000, 768).nlist > auto_params(1_000_000, 768).nlist
    assert auto_params(5000, 1000, "ivfpq").m == 125  # a divisor of the dimension
    sq8 = auto_params(5000, 768, "ivfpq", nlist=32, nbits=8, refine="sq8")
    assert sq8.factory_string() == "IVF32_HNSW32,PQ96x8,Refine(SQ8)"
    saved_before_coarse = {k: v for k, v in sq8.to_dict().items() if k != "coarse"}
    assert IndexParams.from_dict(saved_before_coarse).factory_string() == "IVF32,PQ96x8,Refine(SQ8)"
    assert auto_params(5000, 768, "hnsw", ef_search=99).ef_search == 99
    assert auto_params(5000, 768, "hnsw").ef_search < auto_params(10**6, 768, "hnsw").ef_search
    with pytest.raises(UsageError, match="must divide"):
        auto_params(5000, 768, "ivfpq", m=100)
    with pytest.raises(UsageError, match="--kind .lsh. is unknown"):
        auto_params(5000, 768, "lsh")


@pytest.fixture(scope="module")
def clustered() -> dict[str, np.ndarray]:
    """Clustered 768-d embeddings (100 clusters), held-out queries and their exact top-10."""
    n = 10_000
    x, _ = clustered_embeddings(n + 200, dim=768, n_clusters=100, seed=3)
    db, queries = x[:n], x[n:]
    _, exact_ids = exact_search(db, queries, 10)
    return {"db": db, "queries": queries, "exact_ids": exact_ids}


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_recall_at_auto_params(clustered: dict[str, np.ndarray], kind: str) -> None:
    from mvh.index.vector import VectorIndex

    db = clustered["db"]
    params = auto_params(len(db), db.shape[1], kind)
    index = VectorIndex(build_faiss_index(db, params), rows=FrameRows(pd.DataFrame(), db), params=params)
    _, ids = index.search_ids(clustered["queries"], 10)
    assert recall_at_k(ids, clustered["exact_ids"], 10) >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_recall_50k(kind: str) -> None:
    from mvh.index.vector import VectorIndex

    x, _ = clustered_embeddings(50_000 + 300, dim=768, n_clusters=100, seed=4)
    db, queries = x[:50_000], x[50_000:]
    _, exact_ids = exact_search(db, queries, 10)
    params = auto_params(len(db), db.shape[1], kind)
    index = VectorIndex(build_faiss_index(db, params), rows=FrameRows(pd.DataFrame(), db), params=params)
    _, ids = index.search_ids(queries, 10)
    assert recall_at_k(ids, exact_ids, 10) >= 0.95


def test_store_search_returns_tile_rows(store3: tuple[EmbeddingStore, dict[str, np.ndarray]]) -> None:
    store, embs = store3
    result = build_index(store)
    assert result.params.kind == "flat" and result.n_tiles == 85
    hits = search(store, embs["C"][[4]], k=5)
    assert list(hits.columns) == list(HIT_COLUMNS)
    first = hits.iloc[0]
    assert first["slide_id"] == "C" and first["score"] == pytest.approx(1.0, abs=1e-5)
    assert (first["x"], first["y"]) == (4 * 448, 0) and first["tile_id"] == "C:1792:0:448"
    assert list(hits["rank"]) == [1, 2, 3, 4, 5] and hits["score"].is_monotonic_decreasing
    # Excluding slide A: the query (A's tile 7) finds its perturbed twin in B first, never A.
    hits = search(store, embs["A"][[7]], k=10, exclude_slides=["A"])
    assert "A" not in set(hits["slide_id"]) and len(hits) == 10
    assert hits.iloc[0]["tile_id"] == f"B:{7 * 448}:0:448" and hits.iloc[0]["score"] > 0.99


def test_store_search_matches_exact_for_every_kind(
    store3: tuple[EmbeddingStore, dict[str, np.ndarray]],
) -> None:
    store, embs = store3
    rows, db = store.all_embeddings()
    queries = np.concatenate([embs["A"][:5], embs["C"][:5]])
    _, exact_ids = exact_search(db, queries, 5)
    for kind, extra in (("flat", {}), ("hnsw", {}), ("ivfpq", {"nlist": 2, "m": 8, "nprobe": 2})):
        build_index(store, kind=kind, **extra)
        index = load_index(store)
        assert index.params.kind == kind
        _, ids = index.search_ids(queries, 5)
        assert recall_at_k(ids, exact_ids, 5) >= 0.9, kind
        hits = search(store, queries, k=3, exclude_slides=["C"], index=index)
        assert "C" not in set(hits["slide_id"]) and len(hits) == 30, kind


def test_stale_index_and_incremental_update(
    store3: tuple[EmbeddingStore, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    store, embs = store3
    with pytest.raises(IndexNotFoundError, match="mvh index build"):
        load_index(store)
    build_index(store)
    files_before = set(p.name for p in index_dir(store).iterdir())
    new = np.random.default_rng(5).standard_normal((12, DIM)).astype(np.float32)
    add_slide(store, "D", new)
    with pytest.raises(StaleIndexError, match="1 slide.*added \\(D\\).*mvh index build"):
        search(store, new[:1], k=3)
    info = index_info(store)
    assert info["stale"] and info["n_tiles"] == 85 and info["n_tiles_in_store"] == 97

    result = build_index(store, update=True)
    assert result.incremental and result.n_added == 12 and result.n_tiles == 97
    hits = search(store, new[[3]], k=1)
    assert hits.iloc[0]["slide_id"] == "D" and hits.iloc[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert not index_info(store)["stale"]
    files_after = set(p.name for p in index_dir(store).iterdir())
    # the old build's FAISS file and json are removed; its row part is shared with the new build
    old_parts = {n for n in files_before if n.startswith("part-")}
    assert len(old_parts) == 2 and old_parts <= files_after and len(files_after) == 7
    assert not {n for n in files_before if n.startswith(("tiles-", "build-"))} & files_after
    assert build_index(store, update=True).n_added == 0

    # Re-embedding a slide cannot be an append: the update rebuilds and says so.
    add_slide(store, "C", embs["C"] * 2.0 + 1.0)
    result = build_index(store, update=True)
    assert not result.incremental and any("re-embedded (C)" in note for note in result.notes)
    meta = json.loads((index_dir(store) / "index.json").read_text())
    assert meta["store_version"] == store.version and meta["n_tiles"] == 97


def test_slide_level_ranking(store3: tuple[EmbeddingStore, dict[str, np.ndarray]]) -> None:
    store, embs = store3
    build_index(store)
    ranked = search_slides(store, embs["A"], k=5, exclude_slides=["A"])
    assert list(ranked["slide_id"]) == ["B", "C"]
    assert ranked.iloc[0]["n_hits"] == 30 and ranked.iloc[0]["n_query_tiles"] == 30
    # Hand check of the definition: B's score is the mean over A's tiles of the best cosine in B.
    a = embs["A"] / np.linalg.norm(embs["A"], axis=1, keepdims=True)
    b = embs["B"] / np.linalg.norm(embs["B"], axis=1, keepdims=True)
    assert ranked.iloc[0]["score"] == pytest.approx((a @ b.T).max(axis=1).mean(), abs=1e-5)
    assert ranked.iloc[0]["score"] > ranked.iloc[1]["score"]


def test_update_keeps_the_kind(store3: tuple[EmbeddingStore, dict[str, np.ndarray]]) -> None:
    store, _ = store3
    new = np.random.default_rng(6).standard_normal((10, DIM)).astype(np.float32)
    build_index(store, kind="ivfpq", nlist=2, m=8, nprobe=2)
    add_slide(store, "E", new)
    result = build_index(store, update=True)
    assert result.incremental and result.params.kind == "ivfpq" and result.n_added == 10
    assert search(store, new[[2]], k=1).iloc[0]["tile_id"] == "E:896:0:448"
    build_index(store, kind="hnsw")
    add_slide(store, "F", new[::-1].copy())
    result = build_index(store, update=True)
    assert not result.incremental and result.params.kind == "hnsw" and result.n_tiles == 105
    assert any("rebuilt" in note for note in result.notes)
