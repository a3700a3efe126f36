"""Per-slide reads by row id (read-only and pinned handles) return exactly what the filtered read returns."""

from __future__ import annotations

import json

import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mvh.errors import StoreDamagedError, StoreUnusableError
from mvh.store import EmbeddingStore, tiles_schema
from mvh.store.integrity import CHECKSUM, verify_store
from mvh.store.location import parse_location
from mvh.store.schema import SLIDES_SCHEMA
from mvh.store.slide_rows import SlideRows
from tests.reliability._faults import DIM, distinct, fingerprint, rot_bytes, store_with


def grid_tiles(slide_id: str, n: int, seed: int) -> pd.DataFrame:
    """`n` tiles on a 5-wide grid, in a shuffled order (reads must put them back in (y, x) order)."""
    x = (np.arange(n) % 5) * 448
    y = (np.arange(n) // 5) * 448
    frame = pd.DataFrame(
        {
            "tile_id": [f"{slide_id}:{a}:{b}:448" for a, b in zip(x, y, strict=True)],
            "x": x,
            "y": y,
            "tile_px": 224,
            "mpp": 0.5,
            "tissue_fraction": np.linspace(0.2, 1.0, n, dtype=np.float32),
        }
    )
    return frame.iloc[np.random.default_rng(seed).permutation(n)].reset_index(drop=True)


def add(store: EmbeddingStore, slide_id: str, n: int, seed: int) -> np.ndarray:
    """Commit slide `slide_id` with `n` shuffled tiles; returns its embeddings in (y, x) order."""
    frame = grid_tiles(slide_id, n, seed)
    emb = distinct(n, seed)
    store.add_slide({"slide_id": slide_id, "path": f"/x/{slide_id}.svs"}, frame, emb)
    return emb[np.lexsort((frame["x"].to_numpy(), frame["y"].to_numpy()))]


def reader(store: EmbeddingStore, suffix: str = "") -> EmbeddingStore:
    """A consumer's read-only handle on `store` (`suffix`: '@TAG' for a pinned one)."""
    return EmbeddingStore.open(parse_location(store.uri + suffix, read_only=not suffix))


def assert_reads_equal(by_rows: EmbeddingStore, filtered: EmbeddingStore) -> None:
    """Every done slide: the same rows, columns, types and order through both handles."""
    assert by_rows.slide_ids() == filtered.slide_ids()
    for slide_id in filtered.slide_ids():
        for columns in (["embedding"], ["tile_id", "embedding"], ["tissue_fraction"]):
            row, want = filtered.raw_slide_tiles(slide_id, columns)
            got_row, got = by_rows.raw_slide_tiles(slide_id, columns)
            assert got_row["commit"] == row["commit"]
            assert got.schema == want.schema and got.equals(want), (slide_id, columns)
        got_emb, got_xy = by_rows.slide_embeddings(slide_id)
        want_emb, want_xy = filtered.slide_embeddings(slide_id)
        assert got_emb.dtype == want_emb.dtype == np.float32 and got_xy.dtype == np.int64
        np.testing.assert_array_equal(got_emb, want_emb)
        np.testing.assert_array_equal(got_xy, want_xy)
        pd.testing.assert_frame_equal(by_rows.slide_tiles(slide_id), filtered.slide_tiles(slide_id))
    row_map = by_rows.reader.row_map
    assert row_map is not None and row_map.version == by_rows.tables.tiles.version
    assert filtered.reader.row_map is None  # the writable handle read through the filter


@pytest.fixture()
def many(tmp_path) -> tuple[EmbeddingStore, dict[str, np.ndarray]]:
    """A store of 12 slides of 1..34 tiles, one commit (and one fragment) each."""
    store = EmbeddingStore.create(tmp_path / "many.lance", fingerprint())
    expected = {f"s{i:02d}": add(store, f"s{i:02d}", 1 + 3 * i, seed=i + 1) for i in range(12)}
    return store, expected


def test_a_read_only_handle_reads_every_slide_by_rows_as_the_filter_does(many) -> None:
    store, expected = many
    ro = reader(store)
    assert ro.reader.row_map is None  # built on the first per-slide read, not at open
    assert_reads_equal(ro, store)
    for slide_id, emb in expected.items():  # and both are what was written, by (y, x)
        np.testing.assert_array_equal(ro.slide_embeddings(slide_id)[0], emb)
    row_map = ro.reader.row_map
    assert len(row_map.runs) == 12
    assert all(len(row_map.row_ids(s, c)) == 1 + 3 * int(s[1:]) for s, c in row_map.runs)
    assert all(len(runs) == 1 for runs in row_map.runs.values())  # a slide appended at once: one run


def test_after_compaction_fragments_hold_several_slides_and_reads_still_agree(many) -> None:
    store, expected = many
    store.optimize()
    assert store.tables.tiles.stats()["fragment_stats"]["num_fragments"] < 12  # slides share fragments now
    ro = reader(store)
    assert_reads_equal(ro, store)
    fragments = {int(runs[0, 0]) >> 32 for runs in ro.reader.row_map.runs.values()}
    assert len(fragments) < 12
    np.testing.assert_array_equal(ro.slide_embeddings("s07")[0], expected["s07"])


def test_a_re_extracted_slide_reads_its_new_tiles_and_an_older_handle_its_old_ones(many) -> None:
    store, expected = many
    before = reader(store)
    np.testing.assert_array_equal(before.slide_embeddings("s05")[0], expected["s05"])
    store.optimize()
    new = add(store, "s05", 7, seed=99)  # delete + append under a new commit id
    add(store, "s12", 4, seed=12)
    ro = reader(store)
    assert_reads_equal(ro, store)
    np.testing.assert_array_equal(ro.slide_embeddings("s05")[0], new)
    # The handle opened before reads the version it opened: the old tiles, whole.
    np.testing.assert_array_equal(before.slide_embeddings("s05")[0], expected["s05"])
    assert before.slide_ids() == sorted(expected)


def test_a_pinned_handle_reads_the_tagged_tiles_after_overwrites_and_compaction(many) -> None:
    store, expected = many
    store.create_tag("v1")
    add(store, "s03", 5, seed=50)
    store.optimize()
    pinned = reader(store, "@v1")
    assert pinned.location.pinned
    for slide_id, emb in expected.items():
        np.testing.assert_array_equal(pinned.slide_embeddings(slide_id)[0], emb)
    assert pinned.reader.row_map.version == pinned.tables.tiles.version < store.tables.tiles.version


def test_the_map_is_rescanned_when_the_handle_moves_to_another_version(many) -> None:
    """Row ids move on compaction: a map of another version is never used."""
    store, expected = many
    ro = reader(store)
    ro.slide_embeddings("s01")
    old = ro.reader.row_map
    new = add(store, "s01", 6, seed=77)
    store.optimize()
    for table in (ro.tables.tiles, ro.tables.slides):  # as if the handle were moved to the latest version
        table.checkout_latest()
    ro.reader.frozen_rows = None
    np.testing.assert_array_equal(ro.slide_embeddings("s01")[0], new)
    assert ro.reader.row_map is not old and ro.reader.row_map.version == store.tables.tiles.version
    assert_reads_equal(ro, store)


def test_the_map_ignores_invisible_rows_and_an_unknown_commit_reads_nothing(many) -> None:
    store, _ = many
    leftover = store.writer.tiles_table("s02", grid_tiles("s02", 3, 5), distinct(3, 123), "0-unfinished")
    store.tables.tiles.add(leftover)  # an interrupted re-extraction: tiles appended, no slides row names them
    ro = reader(store)
    assert_reads_equal(ro, store)
    assert len(ro.reader.row_map.row_ids("s02", "0-unfinished")) == 3
    assert len(ro.reader.row_map.row_ids("s02", "no-such-commit")) == 0


def test_a_row_appended_behind_mvhs_back_is_read_and_refused_like_the_filter(many) -> None:
    store, _ = many
    row = store.reader.done_row("s04")
    extra = store.writer.tiles_table("s04", grid_tiles("s04", 1, 1), distinct(1, 404), row["commit"])
    store.tables.tiles.add(extra)  # a duplicate tile id under the slide's own commit
    ro = reader(store)
    got = ro.raw_slide_tiles("s04", ["tile_id"])[1]
    assert got.equals(store.raw_slide_tiles("s04", ["tile_id"])[1]) and got.num_rows == row["n_tiles"] + 1
    for handle in (ro, store):
        with pytest.raises(StoreDamagedError, match=r"slides \['s04'\] do not hold the tiles"):
            handle.slide_embeddings("s04")
    assert {p.slide_id for p in verify_store(ro).problems} == {"s04"}


def test_bit_rot_is_refused_and_found_through_a_read_only_handle(tmp_path) -> None:
    a, b = distinct(5, 1), distinct(4, 2)
    store = store_with(tmp_path / "rot.lance", {"a": a, "b": b})
    rot_bytes(tmp_path / "rot.lance", a, 2)
    ro = reader(store)
    with pytest.raises(StoreDamagedError, match=r"non-finite embedding values in slide\(s\) \['a'\]"):
        ro.slide_embeddings("a")
    np.testing.assert_array_equal(ro.slide_embeddings("b")[0], b)
    rot_bytes(tmp_path / "rot.lance", b, 1, value=7.0)  # finite but changed: only the checksum sees it
    problems = verify_store(reader(store)).problems
    assert {(p.slide_id, p.kind) for p in problems if p.slide_id == "b"} == {("b", CHECKSUM)}


def test_a_store_of_an_older_mvh_reads_by_slide_id_rows(tmp_path) -> None:
    """No commit column: the map is keyed by slide_id alone, as the filter is."""
    uri = tmp_path / "old.lance"
    db = lancedb.connect(str(uri))
    old_tiles = pa.schema([f for f in tiles_schema(DIM) if f.name != "commit"])
    old_slides = pa.schema(
        [f for f in SLIDES_SCHEMA if f.name not in ("commit", "checksum", "slide_attrs", "file_hash")]
    )
    parts, rows = [], []
    for i, sid in enumerate(("a", "b", "c")):
        frame = grid_tiles(sid, 4 + i, i).assign(slide_id=sid, model="m", weights_sha256="random-init")
        frame["embedding"] = list(distinct(4 + i, i))
        parts.append(pa.Table.from_pandas(frame[old_tiles.names], schema=old_tiles, preserve_index=False))
        done = {"slide_id": sid, "status": "done", "n_tiles": 4 + i}
        rows.append({n: None for n in old_slides.names} | done)
    db.create_table("tiles", data=pa.concat_tables(parts))  # one fragment holding all three slides
    db.create_table("slides", data=pa.Table.from_pylist(rows, schema=old_slides))
    meta = {"fingerprint": fingerprint().to_dict(), "mvh_version": "0.0.9", "created": "then"}
    values = [json.dumps(v) for v in meta.values()]
    db.create_table("meta", data=pa.table({"key": list(meta), "value": values}))
    writable, ro = EmbeddingStore.open(uri), reader(EmbeddingStore.open(uri))
    assert ro.legacy
    assert_reads_equal(ro, writable)
    assert set(ro.reader.row_map.runs) == {("a", None), ("b", None), ("c", None)}


@pytest.mark.parametrize("batch_rows", [2, 65536], ids=["keys-across-batches", "one-batch"])
def test_slide_rows_scan_groups_row_ids_by_slide_and_commit(tmp_path, batch_rows) -> None:
    """Independent of the store: row ids by (slide_id, commit) on a plain LanceDB table."""
    db = lancedb.connect(str(tmp_path / "plain"))
    first = {"slide_id": ["a", "b", "a", "a", "b"], "commit": ["1", "2", "9", "1", "2"], "v": range(5)}
    table = db.create_table("t", data=pa.table(first))
    table.add(pa.table({"slide_id": ["b", "a"], "commit": ["2", "1"], "v": [5, 6]}))  # a second fragment
    batches = table.search().select(["v"]).to_batches(batch_rows)
    assert max(b.num_rows for b in batches) == min(batch_rows, 5)  # the scan really comes in batches
    rows = SlideRows.scan(table, with_commit=True, batch_rows=batch_rows)
    fragment_1 = 1 << 32
    assert {k: rows.row_ids(*k).tolist() for k in rows.runs} == {
        ("a", "1"): [0, 3, fragment_1 + 1],
        ("b", "2"): [1, 4, fragment_1],
        ("a", "9"): [2],
    }
    assert rows.version == table.version and rows.row_ids("a", "2").size == 0
    taken = table.take_row_ids(rows.row_ids("a", "1").tolist()).select(["v"]).to_arrow()
    assert taken["v"].to_pylist() == [0, 3, 6]


def test_open_snapshot_reads_every_slide_by_rows_and_never_writes(many) -> None:
    """verify, export and survival open this way: one scan of the row map, then a take per slide."""
    store, expected = many
    snapshot = EmbeddingStore.open_snapshot(store.uri)
    assert_reads_equal(snapshot, store)
    report = verify_store(EmbeddingStore.open_snapshot(store.uri))
    assert report.n_slides == 12 and not report.problems
    with pytest.raises(StoreUnusableError, match="--read-only"):
        add(snapshot, "s99", 3, seed=5)
    assert "s99" not in store.slide_ids()


def test_slide_rows_keep_runs_and_join_a_run_cut_by_batches(tmp_path) -> None:
    db = lancedb.connect(str(tmp_path / "plain"))
    table = db.create_table("t", data=pa.table({"slide_id": ["a"] * 5 + ["b", "a", "a"], "v": range(8)}))
    rows = SlideRows.scan(table, with_commit=False, batch_rows=2)  # rows 0-4 of "a" come in 3 batches
    assert rows.runs[("a", None)].tolist() == [[0, 5], [6, 2]]
    assert rows.row_ids("a", None).tolist() == [0, 1, 2, 3, 4, 6, 7]
    assert rows.row_ids("b", None).tolist() == [5] and rows.row_ids("c", None).dtype == np.uint64
