"""EmbeddingStore: fingerprint binding, atomic per-slide commits, crash recovery, consistent reads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mvh.errors import FingerprintMismatchError, StoreError, StoreNotFoundError, UsageError
from mvh.store import EmbeddingStore, StoreFingerprint, embeddings_to_numpy

DIM = 8


def make_fp(**changes: object) -> StoreFingerprint:
    base = dict(
        model="mv_hybrid_tiny",
        model_config={"embed_dim": 64, "depth": (4,)},
        weights_sha256="random-init",
        weights_path=None,
        embed_dim=DIM,
        tile_px=224,
        mpp=0.5,
        mean=(0.7, 0.5, 0.6),
        std=(0.2, 0.2, 0.2),
    )
    base.update(changes)
    return StoreFingerprint(**base)  # type: ignore[arg-type]


def tiles_of(slide_id: str, n: int, cols: int = 4, size: int = 448) -> pd.DataFrame:
    x = (np.arange(n) % cols) * size
    y = (np.arange(n) // cols) * size
    return pd.DataFrame(
        {
            "tile_id": [f"{slide_id}:{a}:{b}:{size}" for a, b in zip(x, y, strict=True)],
            "x": x,
            "y": y,
            "tile_px": 224,
            "mpp": 0.5,
            "tissue_fraction": np.linspace(0.3, 1.0, n, dtype=np.float32),
        }
    )


def record(slide_id: str) -> dict[str, object]:
    return {
        "slide_id": slide_id,
        "path": f"/data/{slide_id}.svs",
        "size": 123,
        "width": 4000,
        "height": 3000,
        "mpp": 0.25,
        "mpp_source": "metadata",
        "seconds": 1.5,
    }


@pytest.fixture()
def store(tmp_path):
    return EmbeddingStore.create(tmp_path / "s.lance", make_fp())


def test_fingerprint_json_round_trip_and_key() -> None:
    fp = make_fp()
    again = StoreFingerprint.from_dict(fp.to_dict())
    assert again == fp and again.matches(fp)
    assert fp.model_config == {"embed_dim": 64, "depth": [4]}  # JSON-normalised on construction
    assert not fp.matches(make_fp(mpp=0.25))
    assert not fp.matches(make_fp(weights_sha256="ab" * 32))
    assert fp.matches(make_fp(weights_path="/elsewhere/ckpt.pth"))  # the path is not identity, the sha is
    with pytest.raises(StoreError, match="unknown fields"):
        StoreFingerprint.from_dict({**fp.to_dict(), "bogus": 1})


def test_open_missing_store_is_a_usage_error(tmp_path) -> None:
    with pytest.raises(StoreNotFoundError, match="no embedding store"):
        EmbeddingStore.open(tmp_path / "nothing.lance")
    assert issubclass(StoreNotFoundError, UsageError)


def test_mismatched_fingerprint_refused_naming_both(store) -> None:
    other = make_fp(model="vit_s24_dinov2", embed_dim=DIM)
    with pytest.raises(FingerprintMismatchError) as info:
        EmbeddingStore.open_or_create(store.uri, other)
    assert "mv_hybrid_tiny" in str(info.value) and "vit_s24_dinov2" in str(info.value)
    assert "\n" not in str(info.value)
    assert EmbeddingStore.open_or_create(store.uri, make_fp()).fingerprint == store.fingerprint


def test_add_and_read_back_in_stable_order(store) -> None:
    rng = np.random.default_rng(0)
    tiles = tiles_of("a", 10)
    emb = rng.normal(size=(10, DIM)).astype(np.float32)
    perm = rng.permutation(10)
    store.add_slide(record("a"), tiles.iloc[perm], emb[perm])
    got, coords = store.slide_embeddings("a")
    order = np.lexsort((tiles["x"], tiles["y"]))  # (y, x) row-major
    np.testing.assert_array_equal(got, emb[order])
    np.testing.assert_array_equal(coords, tiles[["x", "y"]].to_numpy()[order])
    assert coords.dtype == np.int64 and got.dtype == np.float32
    frame = store.slide_tiles("a")
    assert list(frame["tile_id"]) == list(tiles["tile_id"].iloc[order])
    assert set(frame["model"]) == {"mv_hybrid_tiny"} and set(frame["weights_sha256"]) == {"random-init"}
    row = store.slides().iloc[0]
    assert (row["status"], row["n_tiles"], row["mpp_source"], row["path"]) == (
        "done",
        10,
        "metadata",
        "/data/a.svs",
    )
    assert store.n_tiles == 10 and store.slide_ids() == ["a"]


def test_float16_store_halves_the_embedding_column(tmp_path) -> None:
    store = EmbeddingStore.create(tmp_path / "h.lance", make_fp(embedding_dtype="float16"))
    emb = np.random.default_rng(1).normal(size=(5, DIM)).astype(np.float32)
    store.add_slide(record("a"), tiles_of("a", 5), emb)
    assert store.schema()["tiles"].field("embedding").type == pa.list_(pa.float16(), DIM)
    got, _ = store.slide_embeddings("a")
    np.testing.assert_allclose(got, emb.astype(np.float16).astype(np.float32), rtol=0, atol=0)


def test_version_changes_on_every_commit(store) -> None:
    versions = [store.version]
    store.add_slide(record("a"), tiles_of("a", 3), np.zeros((3, DIM)))
    versions.append(store.version)
    store.add_failed_slide(record("b"), "unreadable")
    versions.append(store.version)
    assert versions == sorted(set(versions))


def test_crash_between_tiles_and_done_row_leaves_no_visible_half_slide(store, monkeypatch) -> None:
    store.add_slide(record("a"), tiles_of("a", 4), np.ones((4, DIM)))

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed between the two writes")

    monkeypatch.setattr(store.writer, "upsert_slide", crash)
    with pytest.raises(KeyboardInterrupt):
        store.add_slide(record("b"), tiles_of("b", 6), np.full((6, DIM), 2.0))
    monkeypatch.undo()
    reader = EmbeddingStore.open(store.uri)
    assert reader.slide_ids() == ["a"] and reader.n_tiles == 4
    rows, emb = reader.all_embeddings()
    assert set(rows["slide_id"]) == {"a"} and len(emb) == 4
    with pytest.raises(StoreError, match="absent"):
        reader.slide_embeddings("b")
    with pytest.raises(StoreError, match="not in store"):
        reader.rows_by_tile_ids(["b:0:0:448"])
    assert reader.orphan_tile_count() == 6
    # The rerun commits under a new commit id: the orphans stay invisible, never duplicated in reads.
    store.add_slide(record("b"), tiles_of("b", 6), np.full((6, DIM), 3.0))
    np.testing.assert_array_equal(store.slide_embeddings("b")[0], np.full((6, DIM), 3.0))
    rows, emb = store.all_embeddings()
    assert len(rows) == 10 and rows["tile_id"].is_unique
    assert len(store.rows_by_tile_ids(["b:0:0:448"])) == 1


def test_overwrite_replaces_tiles_and_a_failed_rerun_keeps_them(store) -> None:
    store.add_slide(record("a"), tiles_of("a", 8), np.zeros((8, DIM)))
    store.add_slide(record("a"), tiles_of("a", 5), np.ones((5, DIM)))
    emb, _ = store.slide_embeddings("a")
    np.testing.assert_array_equal(emb, np.ones((5, DIM)))
    assert store.tables.tiles.count_rows() == 5  # the superseded commit's tiles are deleted after the switch
    assert store.add_failed_slide(record("a"), "decode error in tile 3") is False
    row = store.slides().iloc[0]
    assert (row["status"], row["n_tiles"]) == ("done", 5)
    np.testing.assert_array_equal(store.slide_embeddings("a")[0], np.ones((5, DIM)))
    assert store.add_failed_slide(record("z"), "unreadable") is True
    assert store.slide_ids() == ["a"] and store.slide_ids(None) == ["a", "z"]


def test_rows_by_tile_ids_in_the_order_asked(store) -> None:
    emb = np.arange(6 * DIM, dtype=np.float32).reshape(6, DIM)
    tiles = tiles_of("a", 6)
    store.add_slide(record("a"), tiles, emb)
    ask = [tiles["tile_id"][4], tiles["tile_id"][0], tiles["tile_id"][4]]
    rows = store.rows_by_tile_ids(ask, with_embeddings=True)
    assert list(rows["tile_id"]) == ask
    np.testing.assert_array_equal(np.stack(rows["embedding"]), emb[[4, 0, 4]])


def test_invalid_embeddings_are_refused(store) -> None:
    with pytest.raises(StoreError, match="do not match"):
        store.add_slide(record("a"), tiles_of("a", 3), np.zeros((3, DIM + 1)))
    with pytest.raises(StoreError, match="NaN"):
        store.add_slide(record("a"), tiles_of("a", 2), np.full((2, DIM), np.nan))
    assert store.slides().empty


def test_embeddings_to_numpy_respects_slices() -> None:
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 3)
    chunked = pa.chunked_array([arr.slice(2, 3), arr.slice(7, 2)])
    np.testing.assert_array_equal(embeddings_to_numpy(chunked, 3), values[[2, 3, 4, 7, 8]])


def test_reader_during_writes_sees_whole_slides_only(store) -> None:
    """Every slide a reader sees has all its tiles from ONE write (generation), never a mixture."""
    n = {f"s{i}": 20 + 3 * i for i in range(6)}
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            writer_store = EmbeddingStore.open(store.uri)
            for gen in range(3):
                for sid, count in n.items():
                    writer_store.add_slide(
                        record(sid), tiles_of(sid, count), np.full((count, DIM), float(gen))
                    )
        except BaseException as exc:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reader = EmbeddingStore.open(store.uri)
    checks = 0
    while not stop.is_set() or checks == 0:
        rows, emb = reader.all_embeddings()
        for sid, part in rows.groupby("slide_id"):
            assert len(part) == n[sid]
            assert np.unique(emb[part.index.to_numpy()]).size == 1
        checks += 1
    thread.join()
    assert not errors, errors
    assert checks > 1 and reader.n_tiles == sum(n.values())


def test_optimize_indexes_ids_and_keeps_reads(store) -> None:
    for sid, n in (("a", 5), ("b", 3)):
        store.add_slide(record(sid), tiles_of(sid, n), np.full((n, DIM), float(n)))
    before = store.all_embeddings()
    store.optimize()
    assert {tuple(ix.columns) for ix in store.tables.tiles.list_indices()} == {("slide_id",), ("tile_id",)}
    store.add_slide(record("c"), tiles_of("c", 2), np.zeros((2, DIM)))  # appended after the index
    rows, emb = store.all_embeddings()
    assert rows[rows["slide_id"] != "c"].reset_index(drop=True).equals(before[0])
    np.testing.assert_array_equal(emb[: len(before[1])], before[1])
    assert len(store.slide_embeddings("c")[0]) == 2 and len(store.rows_by_tile_ids(["c:448:0:448"])) == 1


WRITER = """
import sys
import numpy as np, pandas as pd
from mvh.store import EmbeddingStore
store = EmbeddingStore.open(sys.argv[1])
for i in range(8):
    sid = f"{sys.argv[2]}{i}"
    x = np.arange(30) * 448
    tiles = pd.DataFrame({"tile_id": [f"{sid}:{v}:0:448" for v in x], "x": x, "y": 0, "tile_px": 224,
                          "mpp": 0.5, "tissue_fraction": 1.0})
    store.add_slide({"slide_id": sid, "path": sid}, tiles, np.full((30, int(sys.argv[3])), float(i)))
"""


def test_two_processes_append_to_one_store(store) -> None:
    """Concurrent writers (as with --devices): every slide lands once, whole."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, store.uri, prefix, str(DIM)], env=env)
        for prefix in ("p", "q")
    ]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    assert len(store.slide_ids()) == 16 and store.n_tiles == 16 * 30
    ids = store.tables.tiles.to_arrow().column("tile_id").to_pylist()
    assert len(ids) == len(set(ids)) == 16 * 30
    rows, emb = store.all_embeddings()
    for sid, part in rows.groupby("slide_id"):
        assert np.all(emb[part.index.to_numpy()] == float(sid[1:]))


def test_all_embeddings_of_chosen_slides_in_one_scan(store) -> None:
    for sid, n in (("a", 3), ("b", 4), ("c", 2)):
        store.add_slide(record(sid), tiles_of(sid, n), np.full((n, DIM), float(n)))
    rows, emb = store.all_embeddings(slide_ids=["c", "a"])
    assert list(rows["slide_id"]) == ["a"] * 3 + ["c"] * 2
    np.testing.assert_array_equal(emb[:, 0], [3, 3, 3, 2, 2])
    rows, emb = store.all_embeddings(slide_ids=[])
    assert len(rows) == 0 and emb.shape == (0, DIM)
    store.add_failed_slide(record("f"), "unreadable")
    with pytest.raises(StoreError, match=r"slides \['f', 'zz'\] are not done"):
        store.all_embeddings(slide_ids=["a", "f", "zz"])


def test_invisible_leftovers_older_than_an_hour_go_with_the_next_commit(store, monkeypatch) -> None:
    import mvh.store.writer as store_module

    old = f"{int((time.time() - 7200) * 1000):012x}-{'0' * 16}"
    fresh = f"{int(time.time() * 1000):012x}-{'1' * 16}"
    for commit in (old, fresh):  # two interrupted commits: tiles appended, no slides row
        table = store.writer.tiles_table("a", tiles_of("a", 3), np.zeros((3, DIM)), commit)
        store.writer.append_tiles("a", table)
    assert store.orphan_tile_count() == 6
    monkeypatch.setattr(store_module, "new_commit", lambda: f"{int(time.time() * 1000):012x}-{'2' * 16}")
    store.add_slide(record("a"), tiles_of("a", 3), np.ones((3, DIM)))
    left = set(store.tables.tiles.to_arrow().column("commit").to_pylist())
    assert old not in left and fresh in left  # a fresh one may belong to a writer still running
    assert store.orphan_tile_count() == 3 and store.n_tiles == 3


def test_one_handle_reads_its_slides_tile_commits_once_not_per_commit(store, monkeypatch) -> None:
    """Finding a slide's leftover commits filtered the whole tiles table on every commit (quadratic at
    10M tiles); a handle now reads (slide_id, commit) once and keeps the set current itself."""
    import lancedb.table

    searched: list[str] = []
    search = lancedb.table.LanceTable.search

    def counted(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        searched.append(self.name)
        return search(self, *args, **kwargs)

    monkeypatch.setattr(lancedb.table.LanceTable, "search", counted)
    for sid in ("a", "b", "c", "d"):
        store.add_slide(record(sid), tiles_of(sid, 3), np.zeros((3, DIM)))
    store.add_slide(record("b"), tiles_of("b", 2), np.ones((2, DIM)))  # an overwrite: b's old tiles go
    assert searched.count("tiles") == 1
    assert store.writer.tile_commits("b") == {store.slides().set_index("slide_id").loc["b", "commit"]}
    assert store.n_tiles == 11 and store.orphan_tile_count() == 0


def test_a_creator_losing_the_race_between_its_two_checks_opens_the_winners_store(
    tmp_path, monkeypatch
) -> None:
    """Seen on S3 under load: the other process's meta table appeared between open_or_create's check and
    create's own check; the loser must open that store, not fail with 'a store already exists'."""
    winner = EmbeddingStore.create(tmp_path / "race.lance", make_fp())
    winner.add_slide(record("a"), tiles_of("a", 2), np.ones((2, DIM)))
    real_exists = EmbeddingStore.exists.__func__
    looks: list[object] = []

    def exists(cls: type[EmbeddingStore], where: object) -> bool:
        looks.append(where)  # the first look (open_or_create's) sees no store yet, later ones see it
        return len(looks) > 1 and real_exists(cls, where)

    monkeypatch.setattr(EmbeddingStore, "exists", classmethod(exists))
    loser = EmbeddingStore.open_or_create(tmp_path / "race.lance", make_fp())
    assert loser.slide_ids() == ["a"] and loser.fingerprint == winner.fingerprint
    assert len(looks) >= 3  # open_or_create, create (the race), open_or_create again
