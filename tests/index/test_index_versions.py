"""Versioned indexes on a local store, through the CLI: a tag keeps its index after the head moves on,
a version without an index is searched exactly (with a note), and a reader's private index never writes
to the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mvh.cli import app
from mvh.index.store_scan import scan_top_k
from mvh.store import EmbeddingStore
from tests.index.test_faiss_indexes import DIM, add_slide, make_store


def _cli(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _hits(store: str, tile: str, *extra: str) -> tuple[list[tuple[str, float]], list[str]]:
    out = _cli("search", "--store", store, "--query-tile", tile, "-k", "5", *extra)
    return [(h["tile_id"], round(h["score"], 5)) for h in out["hits"]], out["notes"]


def _files(path: Path) -> dict[str, float]:
    return {str(p.relative_to(path)): p.stat().st_mtime for p in path.rglob("*") if p.is_file()}


@pytest.fixture
def grown(tmp_path: Path) -> tuple[str, list, dict]:
    """A store indexed and tagged `t1`, then one more slide near slide a, and the head rebuilt."""
    rng = np.random.default_rng(7)
    store = make_store(tmp_path)
    base = rng.standard_normal((30, DIM)).astype(np.float32)
    add_slide(store, "a", base)
    add_slide(store, "b", rng.standard_normal((30, DIM)).astype(np.float32))
    uri = str(tmp_path / "store")
    _cli("index", "build", "--store", uri)
    before, _ = _hits(uri, "a:0:0:448")
    tag = _cli("tag", "create", "t1", "--store", uri)
    assert tag["index_kept"]
    add_slide(store, "c", base + 0.01 * rng.standard_normal(base.shape).astype(np.float32))
    _cli("index", "build", "--store", uri)
    return uri, before, tag["versions"]


def test_a_tag_searches_with_its_own_index_after_the_head_moves_on(grown) -> None:
    uri, before, versions = grown
    head, _ = _hits(uri, "a:0:0:448")
    assert {t.split(":")[0] for t, _ in head} & {"c"}  # the head sees the new slide
    tagged, notes = _hits(f"{uri}@t1", "a:0:0:448")
    assert tagged == before and not any("exact" in n for n in notes)
    by_version, _ = _hits(uri, "a:0:0:448", "--store-version", str(versions["slides"]))
    assert by_version == before
    # a third build still keeps the tag's build
    _cli("index", "build", "--store", uri, "--kind", "flat")
    assert _hits(f"{uri}@t1", "a:0:0:448")[0] == before
    info = _cli("index", "info", "--store", uri)
    assert versions["slides"] in info["kept_builds"]


def test_a_version_without_an_index_is_searched_exactly_with_a_note(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    store = make_store(tmp_path)
    add_slide(store, "a", rng.standard_normal((20, DIM)).astype(np.float32))
    add_slide(store, "b", rng.standard_normal((20, DIM)).astype(np.float32))
    uri = str(tmp_path / "store")
    store.create_tag("bare")  # no index was ever built for this version
    add_slide(store, "c", rng.standard_normal((20, DIM)).astype(np.float32))
    _cli("index", "build", "--store", uri)
    hits, notes = _hits(f"{uri}@bare", "a:0:0:448")
    assert any("exact search" in n and "--index-cache" in n for n in notes)
    # independent expectation: numpy cosine over the slides of the tag (a, b), the query tile left out
    pinned = EmbeddingStore.open(f"{uri}@bare")
    emb = {s: pinned.slide_embeddings(s)[0] for s in ("a", "b")}
    db = np.concatenate([emb["a"], emb["b"]])
    unit = db / np.linalg.norm(db, axis=1, keepdims=True)
    sims = unit @ unit[0]
    order = [i for i in np.argsort(-sims, kind="stable") if i != 0][:5]
    tiles = [pinned.slide_tiles(s)["tile_id"].tolist() for s in ("a", "b")]
    names = tiles[0] + tiles[1]
    assert [t for t, _ in hits] == [names[i] for i in order]
    np.testing.assert_allclose([s for _, s in hits], sims[order], atol=1e-5)


def test_a_private_index_cache_never_writes_to_the_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    store = make_store(tmp_path)
    for name in ("a", "b", "c"):
        add_slide(store, name, rng.standard_normal((20, DIM)).astype(np.float32))
    uri = str(tmp_path / "store")
    store.create_tag("t")
    files = _files(tmp_path / "store")
    cache = tmp_path / "cache"
    built = _cli("index", "build", "--store", f"{uri}@t", "--index-cache", str(cache))
    assert any("nothing was written to the store" in n for n in built["notes"])
    exact, _ = _hits(f"{uri}@t", "a:0:0:448")
    private, notes = _hits(f"{uri}@t", "a:0:0:448", "--index-cache", str(cache))
    assert private == exact and not any("exact search" in n for n in notes)
    assert _files(tmp_path / "store") == files  # not one byte changed in the store


def test_streamed_exact_search_equals_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    store = make_store(tmp_path)
    embs = {s: rng.standard_normal((40, DIM)).astype(np.float32) for s in ("a", "b")}
    for s, e in embs.items():
        add_slide(store, s, e)
    queries = rng.standard_normal((7, DIM)).astype(np.float32)
    scores, ids = scan_top_k(store, queries, 6)
    pairs = []  # the rows in scan order, read independently of scan_top_k
    for _, batch in store.scan_tiles(["a", "b"], ["slide_id", "embedding"]):
        pairs.append(np.asarray(batch.column("embedding").to_pylist(), dtype=np.float32))
    db = np.concatenate(pairs)
    unit = db / np.linalg.norm(db, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    want = np.argsort(-(q @ unit.T), axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ unit.T, want, axis=1), atol=1e-5)


def test_streamed_exact_search_gives_ties_to_the_lower_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    store = make_store(tmp_path)
    base = rng.standard_normal((30, DIM)).astype(np.float32)
    a = base.copy()
    a[10:20] = base[0]  # ten copies of row 0 inside one batch: a tie across the cut of its top-3
    b = base[::-1].copy()  # slide b repeats every vector of a, at higher row ids
    add_slide(store, "a", a)
    add_slide(store, "b", b)
    queries = np.stack([base[0], base[5], rng.standard_normal(DIM).astype(np.float32)])
    scores, ids = scan_top_k(store, queries, 3)
    db = np.concatenate(
        [np.asarray(batch.column("embedding").to_pylist(), dtype=np.float32)
         for _, batch in store.scan_tiles(["a", "b"], ["slide_id", "embedding"])]
    )
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        db / np.linalg.norm(db, axis=1, keepdims=True)
    ).T
    for row in range(len(queries)):  # written out: best score first, then the lowest row id
        want = sorted(range(db.shape[0]), key=lambda j: (-round(float(sims[row, j]), 5), j))[:3]
        assert list(ids[row]) == want
    assert list(ids[0]) == [0, 10, 11]
