"""The index modules split out of vector.py: parameter validation, exact search with exclusions,
self-exclusion of stored-tile queries and the build job shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mvh.errors import StoreError, UsageError
from mvh.index import row_parts
from mvh.index.build import BuildResult, IndexBuildConfig, run_index_build
from mvh.index.exact import exact_search
from mvh.index.index_files import load_index
from mvh.index.params import auto_params, check_params
from mvh.index.ranking import search
from mvh.index.row_parts import VectorFile
from mvh.progress import VECTORS, Event, Recorder
from mvh.store import EmbeddingStore
from tests.conftest import synthetic_fingerprint

DIM = 16


def make_store(tmp_path: Path, slides: dict[str, np.ndarray]) -> EmbeddingStore:
    fp = synthetic_fingerprint(DIM)
    store = EmbeddingStore.create(tmp_path / "store", fp)
    for slide_id, emb in slides.items():
        xs = np.arange(len(emb)) * 448
        tiles = pd.DataFrame({"tile_id": [f"{slide_id}:{x}:0:448" for x in xs], "x": xs, "y": 0,
                              "tile_px": 224, "mpp": 0.5, "tissue_fraction": 1.0})
        store.add_slide({"slide_id": slide_id, "path": f"/nowhere/{slide_id}.svs", "mpp": 0.25}, tiles, emb)
    return store


@pytest.mark.parametrize(
    ("given", "flag"),
    [
        ({"hnsw_m": -1}, "--hnsw-m"),
        ({"hnsw_m": 1}, "--hnsw-m"),
        ({"nlist": 0}, "--nlist"),
        ({"nprobe": -3}, "--nprobe"),
        ({"nbits": 3}, "--nbits"),
        ({"m": 0}, "--m"),
        ({"ef_search": 0}, "--ef"),
    ],
)
def test_bad_index_parameters_are_one_line_usage_errors(given: dict, flag: str) -> None:
    with pytest.raises(UsageError, match=flag):
        IndexBuildConfig(store="s.lance", kind="auto", **given)


def test_parameters_of_another_kind_are_refused_not_ignored() -> None:
    with pytest.raises(UsageError, match="--nlist is for --kind ivfpq only"):
        check_params("flat", nlist=64)
    with pytest.raises(UsageError, match="--hnsw-m is for --kind hnsw only"):
        IndexBuildConfig(store="s.lance", kind="ivfpq", hnsw_m=16)
    # `auto` resolving to Flat on a small store cannot honour an IVF setting either.
    with pytest.raises(UsageError, match="--nlist is for --kind ivfpq only, not --kind flat"):
        auto_params(1000, DIM, "auto", nlist=8)
    with pytest.raises(UsageError, match="--kind"):
        IndexBuildConfig(store="s.lance", kind="lsh")


def reference_topk(db, queries, k, forbidden):
    """Independent reference: float64 cosine, forbidden pairs removed, stable order by (-score, row)."""
    dbn = db / np.linalg.norm(db, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out = []
    for i, q in enumerate(qn.astype(np.float64)):
        sims = dbn.astype(np.float64) @ q
        rows = [j for j in np.argsort(-sims, kind="stable") if not forbidden(i, j)][:k]
        out.append(rows + [-1] * (k - len(rows)))
    return np.array(out)


def test_exact_search_with_self_and_group_exclusion_matches_reference() -> None:
    rng = np.random.default_rng(0)
    db = rng.standard_normal((40, DIM)).astype(np.float32)
    groups = np.repeat(np.arange(8), 5)
    allowed = np.ones(40, dtype=bool)
    allowed[[3, 17, 29]] = False
    _, ids = exact_search(db, db, 6, allowed, exclude_rows=np.arange(40), query_groups=groups,
                          database_groups=groups)
    expected = reference_topk(db, db, 6, lambda i, j: j == i or groups[i] == groups[j] or not allowed[j])
    np.testing.assert_array_equal(ids, expected)
    # Self-exclusion alone: the query row never comes back, the rest is the plain ranking.
    _, ids = exact_search(db, db, 3, exclude_rows=np.arange(40))
    np.testing.assert_array_equal(ids, reference_topk(db, db, 3, lambda i, j: i == j))
    # Too few candidates: -1 fills the tail.
    groups5 = np.array([0, 0, 1, 1, 1])
    _, ids = exact_search(db[:5], db[:5], 8, query_groups=np.zeros(5), database_groups=groups5)
    assert (ids[:, 3:] == -1).all() and set(ids[0, :3]) == {2, 3, 4}


def test_stored_tile_query_excludes_itself_unless_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    store = make_store(tmp_path, {"A": rng.standard_normal((12, DIM)).astype(np.float32)})
    run_index_build(IndexBuildConfig(store=store.uri))
    index = load_index(store)
    emb, _ = store.slide_embeddings("A")
    own = "A:896:0:448"
    q = emb[2:3]
    with_self = search(store, q, k=4, index=index)
    assert with_self["tile_id"].iloc[0] == own and len(with_self) == 4
    without = search(store, q, k=4, index=index, exclude_tiles=[own])
    assert own not in set(without["tile_id"]) and len(without) == 4
    assert without["tile_id"].tolist() == with_self["tile_id"].tolist()[1:] + [
        search(store, q, k=5, index=index)["tile_id"].iloc[4]
    ]
    assert without["rank"].tolist() == [1, 2, 3, 4]


def test_index_build_job_shape_and_progress(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    store = make_store(tmp_path, {"A": rng.standard_normal((10, DIM)).astype(np.float32),
                                  "B": rng.standard_normal((7, DIM)).astype(np.float32)})
    recorder = Recorder()
    result = run_index_build(IndexBuildConfig(store=store.uri, kind="flat"), progress=recorder)
    assert recorder.count(Event.TOTAL, VECTORS) == 17 == recorder.count(Event.ADVANCE, VECTORS)
    data = result.to_dict()
    assert data["n_tiles"] == 17 and data["params"]["kind"] == "flat" and data["description"] == "Flat"
    assert BuildResult.from_dict(data) == result


def test_a_truncated_row_part_is_a_one_line_store_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    slides = {f"s{i}": rng.standard_normal((40, DIM)).astype(np.float32) for i in range(3)}
    store = make_store(tmp_path, slides)
    run_index_build(IndexBuildConfig(store=store.uri, kind="ivfpq", nlist=2, m=4, nbits=4))
    part = next((tmp_path / "store" / "_index").glob("part-*.npy"))
    with open(part, "r+b") as fh:
        fh.truncate(part.stat().st_size - 64)  # the last row's bytes are gone
    with pytest.raises(StoreError, match="unreadable.*truncated"):
        load_index(EmbeddingStore.open(store.uri))


@pytest.mark.parametrize("threaded_from", [10**9, 2], ids=["one-thread", "threads"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_vector_file_reads_rows_by_id_as_numpy_loads_them(
    tmp_path: Path, dtype: type, threaded_from: int, monkeypatch
) -> None:
    monkeypatch.setattr(row_parts, "THREADED_READ_RUNS", threaded_from)
    stored = np.random.default_rng(4).standard_normal((300, 24)).astype(dtype)
    np.save(tmp_path / "part.npy", stored)
    vectors = VectorFile(tmp_path / "part.npy")
    assert (len(vectors), vectors.dim, vectors.dtype) == (300, 24, np.dtype(dtype))
    # unsorted, repeated, runs of consecutive rows, the first and the last row
    ids = np.array([299, 5, 6, 7, 5, 0, 150, 151, 42, 299])
    np.testing.assert_array_equal(vectors.rows(ids), stored[ids])
    np.testing.assert_array_equal(vectors.rows(np.arange(300)), stored)
    assert vectors.rows(np.array([], dtype=np.int64)).shape == (0, 24)
    with pytest.raises(IndexError, match="outside 0..299"):
        vectors.rows(np.array([3, 300]))
