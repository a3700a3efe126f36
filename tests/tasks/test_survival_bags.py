"""Patient bags read in one store scan: same rows and order as per-slide reads, integrity checks, dtype."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mvh.errors import DataError, StoreDamagedError, StoreError
from mvh.progress import TILES, Event, Recorder
from mvh.store import EmbeddingStore, StoreFingerprint, embeddings_to_arrow
from mvh.tasks.survival import StoreBags, mean_pool
from mvh.tasks.survival.bags import _non_finite_rows
from tests.conftest import synthetic_fingerprint


def fingerprint(dim: int, dtype: str = "float32") -> StoreFingerprint:
    """A synthetic store fingerprint of `dim` values of `dtype`."""
    return synthetic_fingerprint(dim, embedding_dtype=dtype)


def add_slide(store: EmbeddingStore, slide_id: str, emb: np.ndarray, path: str | None = None,
              xy: np.ndarray | None = None) -> None:
    """Commit `emb` [n, dim] as a slide with tiles at `xy` [n, 2] (default: a row at y = 0)."""
    n = len(emb)
    xy = np.stack([np.arange(n) * 448, np.zeros(n, int)], axis=1) if xy is None else xy
    tiles = pd.DataFrame({
        "tile_id": [f"{slide_id}:{i}" for i in range(n)], "x": xy[:, 0], "y": xy[:, 1],
        "tile_px": 224, "mpp": 0.5, "tissue_fraction": 1.0,
    })
    store.add_slide({"slide_id": slide_id, "path": path, "mpp": 0.25, "width": 448 * n, "height": 448},
                    tiles, emb)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_one_scan_equals_per_slide_reads_in_order(tmp_path: Path, dtype: str, monkeypatch) -> None:
    store = EmbeddingStore.create(tmp_path / "store", fingerprint(4, dtype))
    rng = np.random.default_rng(0)
    sizes = {"s_a": 3, "s_b": 5, "s_c": 2, "s_d": 4, "other": 6}
    embs = {}
    for sid, n in sizes.items():
        embs[sid] = rng.normal(size=(n, 4)).astype(np.float32)
        # Unsorted positions (two tiles share one (x, y)): the bag order must still be (y, x, tile_id).
        xy = rng.integers(0, 3, size=(n, 2)) * 224
        xy[1] = xy[0]
        add_slide(store, sid, embs[sid], xy=xy)
    expected = {sid: store.slide_embeddings(sid) for sid in sizes}
    patients = {"P1": ["s_b", "s_a"], "P2": ["s_c"], "P3": ["s_d"]}
    monkeypatch.setattr(EmbeddingStore, "slide_embeddings", lambda *a: pytest.fail("per-slide read"))
    recorder = Recorder()
    bags = StoreBags.load(store, patients, batch_rows=4, progress=recorder)
    for pid, slides in patients.items():
        want = np.concatenate([expected[s][0] for s in slides])
        assert bags[pid].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(bags[pid].astype(np.float32), want)
    for sid in ("s_a", "s_b"):
        start, stop = bags.slide_span("P1", sid)
        np.testing.assert_array_equal(bags["P1"][start:stop].astype(np.float32), expected[sid][0])
        np.testing.assert_array_equal(bags.slide_coords(sid), expected[sid][1])
    assert bags.slide_span("P1", "s_b") == (0, 5) and bags.slide_span("P1", "s_a") == (5, 8)
    assert list(bags) == ["P1", "P2", "P3"] and len(bags) == 3
    assert recorder.count(Event.TOTAL, TILES) == recorder.count(Event.ADVANCE, TILES) == 14
    small = StoreBags.load(store, {"P2": ["s_c"]})  # 1 of 5 slides: Lance filters instead of a full scan
    np.testing.assert_array_equal(small["P2"].astype(np.float32), expected["s_c"][0])
    pooled = mean_pool(bags, ["P1", "P2"])
    np.testing.assert_allclose(pooled[1], expected["s_c"][0].astype(np.float64).mean(axis=0))


def _raw_row(table: lancedb.table.Table, slide_id: str, tile_id: str, emb: np.ndarray) -> pa.Table:
    """A copy of one stored row of `slide_id` with another tile id and embedding [dim] (damage simulation)."""
    row = table.search().where(f"slide_id = '{slide_id}'").limit(1).to_arrow()
    schema = table.schema
    row = row.select(schema.names)
    row = row.set_column(schema.get_field_index("tile_id"), "tile_id", pa.array([tile_id]))
    emb_field = schema.field("embedding")
    return row.set_column(schema.get_field_index("embedding"), emb_field,
                          embeddings_to_arrow(emb[None, :], "float32").cast(emb_field.type))


def test_duplicated_and_non_finite_tiles_are_refused(tmp_path: Path) -> None:
    store = EmbeddingStore.create(tmp_path / "store", fingerprint(4))
    add_slide(store, "s1", np.ones((3, 4), np.float32))
    add_slide(store, "s2", np.ones((2, 4), np.float32))
    table = lancedb.connect(store.uri).open_table("tiles")
    table.add(_raw_row(table, "s1", "s1:extra", np.ones(4, np.float32)))
    with pytest.raises(StoreDamagedError, match="s1 have more tile rows than their recorded n_tiles"):
        StoreBags.load(store, {"P1": ["s1"], "P2": ["s2"]})
    bad = np.ones(4, np.float32)
    bad[2] = np.inf  # LanceDB refuses NaN on add; bit rot can still produce it, and inf alike
    table.delete("slide_id = 's2' AND tile_id = 's2:0'")
    table.add(_raw_row(table, "s2", "s2:nan", bad))
    table.delete("slide_id = 's1'")
    with pytest.raises(StoreDamagedError, match="s1 have fewer tile rows"):
        StoreBags.load(store, {"P1": ["s1"]})
    # the store's own read refuses the slide first (every whole-slide read checks its values)
    with pytest.raises(StoreDamagedError, match=r"non-finite embedding values in slide\(s\) \['s2'\]"):
        StoreBags.load(store, {"P2": ["s2"]})


def test_slides_not_done_or_shared_by_patients_are_refused(tmp_path: Path) -> None:
    store = EmbeddingStore.create(tmp_path / "store", fingerprint(4))
    add_slide(store, "s1", np.ones((3, 4), np.float32))
    with pytest.raises(StoreError, match="nope are not done"):
        StoreBags.load(store, {"P1": ["s1", "nope"]})
    with pytest.raises(DataError, match="s1 belong to several patients"):
        StoreBags.load(store, {"P1": ["s1"], "P2": ["s1"]})


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_non_finite_rows_by_exponent_bits_equal_isfinite(dtype) -> None:
    info = np.finfo(dtype)
    values = np.array([[0, 1], [info.max, -info.max], [np.inf, 0], [0, -np.inf], [np.nan, 1], [info.tiny, 0]],
                      dtype=dtype)
    np.testing.assert_array_equal(_non_finite_rows(values), ~np.isfinite(values).all(axis=1))
    assert not _non_finite_rows(values[:2]).any()


def test_rows_of_an_uncommitted_write_are_not_read(tmp_path: Path) -> None:
    store = EmbeddingStore.create(tmp_path / "store", fingerprint(4))
    add_slide(store, "s1", np.arange(12, dtype=np.float32).reshape(3, 4))
    add_slide(store, "s2", np.ones((2, 4), np.float32))
    expected = store.slide_embeddings("s1")[0]
    table = lancedb.connect(store.uri).open_table("tiles")
    stray = _raw_row(table, "s1", "s1:stray", np.full(4, 7.0, np.float32))
    # What a write killed before its done row leaves: tiles under a commit no slide row names.
    table.add(stray.set_column(stray.schema.get_field_index("commit"), "commit", pa.array(["killed-write"])))
    bags = StoreBags.load(store, {"P1": ["s1"], "P2": ["s2"]})
    np.testing.assert_array_equal(bags["P1"], expected)
    np.testing.assert_array_equal(bags["P1"], store.slide_embeddings("s1")[0])
