"""Interop jobs: mvh's own round trip, bad files failing alone, unsafe slide ids, export targets, Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from mvh.errors import StoreError, UsageError
from mvh.interop import ExportConfig, ImportConfig, export_parquet, run_export, run_import
from mvh.progress import FILES, SLIDES, Event, Recorder
from mvh.store import EmbeddingStore, StoreFingerprint
from tests.interop.test_peers import DIM, do_import, make_mvh_store, trident_slide


@pytest.fixture()
def mvh_store(tmp_path) -> EmbeddingStore:
    return make_mvh_store(tmp_path / "mvh.lance")


def test_mvh_export_import_round_trip_equal(mvh_store, tmp_path) -> None:
    run_export(ExportConfig(mvh_store.uri, tmp_path / "h5"))
    result = do_import(tmp_path / "h5", tmp_path / "dst.lance", model=None)
    assert result.exit_code == 0 and [f.slide_id for f in result.imported] == ["a", "b"]
    imported = EmbeddingStore.open(tmp_path / "dst.lance")
    # mvh's own export carries the whole fingerprint: model, config, weights, mean/std come back.
    fp, original = imported.fingerprint, mvh_store.fingerprint
    assert fp.key() == original.key() and (fp.mean, fp.std, fp.seed) == (original.mean, original.std, 0)
    assert (fp.model, fp.embed_dim, fp.extra) == ("tiny", DIM, {"imported_from": "h5"})
    assert imported.slide_ids() == ["a", "b"]
    for sid in ("a", "b"):
        for got, want in zip(imported.slide_embeddings(sid), mvh_store.slide_embeddings(sid), strict=True):
            np.testing.assert_array_equal(got, want)
        cols = ["tile_id", "x", "y", "tile_px", "mpp", "tissue_fraction"]
        assert imported.slide_tiles(sid)[cols].equals(mvh_store.slide_tiles(sid)[cols])
    src = mvh_store.slides(status="done").set_index("slide_id")
    dst = imported.slides().set_index("slide_id")
    for col in ("width", "height", "mpp", "mpp_source", "n_tiles"):
        assert list(dst[col]) == list(src[col]), col
    assert list(dst["path"]) == ["a.svs", "b.svs"]  # the slide's file name: no local path is exported


def _bad(kind: str, path: Path) -> None:
    """Damage a good TRIDENT file in one way."""
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
        return
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:1500])
        return
    with h5py.File(path, "a") as f:
        n = len(f["coords"])
        if kind in ("strings", "ints", "wrong_shape", "nan"):
            del f["features"]
            data = {
                "strings": np.array([b"x"] * n, dtype="S1"),
                "ints": np.ones((n, DIM), np.int64),
                "wrong_shape": np.ones((n + 1, DIM), np.float32),
                "nan": np.full((n, DIM), np.nan, np.float32),
            }[kind]
            f["features"] = data
        elif kind == "float_coords":
            del f["coords"]
            f["coords"] = np.zeros((n, 2), np.float32)
        elif kind == "no_coords":
            del f["coords"]
        else:
            key, value = kind.split("=")
            f["coords"].attrs[key] = float(value)


BAD = [
    "garbage",
    "truncated",
    "strings",
    "ints",
    "wrong_shape",
    "nan",
    "float_coords",
    "no_coords",
    "patch_size=0",
    "patch_size=-256",
    "mpp=0",
    "mpp=-0.5",
    "target_magnification=0",
    "patch_size_level0=-1",
    "patch_size=1e30",
    "patch_size_level0=4294967296",
    "patch_size=256.5",
]


@pytest.mark.parametrize("kind", BAD)
def test_one_bad_file_fails_alone_and_is_recorded(tmp_path, kind) -> None:
    folder = trident_slide(tmp_path / "job", "good", 4).parent
    trident_slide(tmp_path / "job", "worse", 3)
    _bad(kind, folder / "worse.h5")
    result = do_import(folder, tmp_path / "s.lance")
    assert result.exit_code == 1
    assert [f.slide_id for f in result.imported] == ["good"]
    assert [Path(f.file).name for f in result.failed] == ["worse.h5"]
    assert str(folder / "worse.h5") in result.failed[0].error and "\n" not in result.failed[0].error
    store = EmbeddingStore.open(tmp_path / "s.lance")
    assert store.slide_ids("failed") == ["worse"] and store.slide_ids() == ["good"]


def test_bad_file_does_not_replace_a_done_slide(tmp_path) -> None:
    folder = trident_slide(tmp_path / "job", "s", 4).parent
    do_import(folder, tmp_path / "s.lance")
    _bad("garbage", folder / "s.h5")
    result = do_import(folder, tmp_path / "s.lance")
    assert result.exit_code == 1 and any("kept as it was" in n for n in result.notes)
    assert EmbeddingStore.open(tmp_path / "s.lance").slide_ids() == ["s"]


def test_only_bad_files_give_a_result_not_an_exception(tmp_path) -> None:
    folder = tmp_path / "h5"
    folder.mkdir()
    (folder / "x.h5").write_bytes(b"not an h5 file")
    result = do_import(folder, tmp_path / "s.lance", tile_px=224, mpp=0.5, slide_mpp=0.25)
    assert result.exit_code == 1 and result.failed[0].slide_id == "x"
    assert not EmbeddingStore.exists(tmp_path / "s.lance") and result.fingerprint is None


def test_empty_slides_only_need_a_store_of_known_dim(tmp_path) -> None:
    folder = trident_slide(tmp_path / "job", "empty", 0).parent
    with pytest.raises(UsageError, match="dim is unknown"):
        do_import(folder, tmp_path / "s.lance")
    trident_slide(tmp_path / "job2", "full", 2)
    do_import(tmp_path / "job2" / "20x_256px_0px_overlap" / "features_uni_v1", tmp_path / "s.lance")
    result = do_import(folder, tmp_path / "s.lance")
    assert result.exit_code == 0 and result.empty == ["empty"]
    store = EmbeddingStore.open(tmp_path / "s.lance")
    assert store.slides().set_index("slide_id").loc["empty", "n_tiles"] == 0


@pytest.mark.parametrize("name", ["../../x", "/abs/path/x", "a\\b", "..", "bad\x01id", " pad", ""])
def test_unsafe_slide_ids_are_refused_before_anything_is_written(tmp_path, name) -> None:
    folder = trident_slide(tmp_path / "job", "ok", 2).parent
    path = trident_slide(tmp_path / "job", "evil", 2)
    with h5py.File(path, "a") as f:
        f["coords"].attrs["name"] = name
    with pytest.raises(UsageError) as err:
        do_import(folder, tmp_path / "s.lance")
    assert str(path) in str(err.value) and "slide id" in str(err.value)
    assert not EmbeddingStore.exists(tmp_path / "s.lance")


def test_two_files_of_one_slide_are_refused(tmp_path) -> None:
    folder = trident_slide(tmp_path / "job", "one", 2).parent
    path = trident_slide(tmp_path / "job", "two", 2)
    with h5py.File(path, "a") as f:
        f["coords"].attrs["name"] = "one"
    with pytest.raises(UsageError, match="both hold slide 'one'"):
        do_import(folder, tmp_path / "s.lance")


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        ({"mpp": 0.0}, "--mpp"),
        ({"mpp": float("inf")}, "--mpp"),
        ({"tile_px": -1}, "--tile-px"),
        ({"slide_mpp": -0.25}, "--slide-mpp"),
        ({"embedding_dtype": "int8"}, "--dtype"),
    ],
)
def test_import_flags_checked_before_any_work(tmp_path, flags, flag) -> None:
    folder = trident_slide(tmp_path / "job", "s", 2).parent
    with pytest.raises(UsageError, match=flag):
        ImportConfig(folder, str(tmp_path / "s.lance"), "m", **flags)
    for where, why in ((tmp_path, "no .h5 files"), (tmp_path / "absent", "not a folder")):
        cfg = ImportConfig(where, str(tmp_path / "s.lance"), "m")  # a config reads no files
        with pytest.raises(UsageError, match=why):
            run_import(cfg)
        assert not (tmp_path / "s.lance").exists()


def test_export_out_naming_an_existing_file_is_refused(mvh_store, tmp_path) -> None:
    target = tmp_path / "exists"
    target.write_text("keep me")
    for fmt in ("h5", "clam", "parquet", "geojson"):
        with pytest.raises(UsageError, match="--out .* is an existing file"):
            run_export(ExportConfig(mvh_store.uri, target, fmt))
    with pytest.raises(UsageError, match="--out .* is a file"):
        export_parquet(mvh_store, target)
    assert target.read_text() == "keep me"
    with pytest.raises(UsageError, match="--format 'csv' is unknown"):
        ExportConfig(mvh_store.uri, tmp_path / "o", "csv")


def test_export_writes_nothing_outside_out(tmp_path) -> None:
    # A store written before slide ids were checked may hold an id that names a path.
    store = make_mvh_store(tmp_path / "s.lance")
    tiles = store.slide_tiles("a")
    emb, _ = store.slide_embeddings("a")
    record = {"slide_id": "../escaped", "path": "/x.svs", "width": 1, "height": 1, "mpp": 0.25}
    store.add_slide(record, tiles.assign(tile_id=[f"e{i}" for i in range(len(tiles))]), emb)
    with pytest.raises(UsageError, match="outside"):
        run_export(ExportConfig(store.uri, tmp_path / "out" / "h5"))
    assert not (tmp_path / "out" / "escaped.h5").exists()


def test_parquet_export_out_is_a_folder_and_the_old_file_form_is_refused(mvh_store, tmp_path) -> None:
    result = run_export(ExportConfig(mvh_store.uri, tmp_path / "pq", "parquet"))
    assert result.files == [str(tmp_path / "pq" / "tiles.parquet")]
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == ["tiles.parquet"]
    old = tmp_path / "x.parquet"  # the file form of earlier releases
    with pytest.raises(UsageError, match=r"--out .*x\.parquet names a file, .* e\.g\. --out \S*x$"):
        ExportConfig(mvh_store.uri, old, "parquet")
    with pytest.raises(UsageError, match="names a file"):
        export_parquet(mvh_store, old)
    assert not old.exists()


def test_parquet_export(mvh_store, tmp_path) -> None:
    out = export_parquet(mvh_store, tmp_path / "pq")
    assert out == tmp_path / "pq" / "tiles.parquet"
    table = pq.read_table(out)
    assert table.num_rows == 11 and "commit" not in table.column_names
    fp = StoreFingerprint.from_dict(json.loads(table.schema.metadata[b"mvh.fingerprint"]))
    assert fp == mvh_store.fingerprint
    rows, emb = mvh_store.all_embeddings(columns=("slide_id", "tile_id"))
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert table.column("tile_id").to_pylist() == list(rows["tile_id"])
    np.testing.assert_array_equal(got, emb)


def test_export_verify_runs_verify_store_first(mvh_store, tmp_path, monkeypatch) -> None:
    result = run_export(ExportConfig(mvh_store.uri, tmp_path / "ok", verify=True))
    assert result.verified and result.n_slides == 2
    import mvh.store.integrity as integrity

    real = integrity.verify_store

    def damaged(store, slide_ids=None):
        report = real(store, slide_ids)
        report.problems.append(integrity.Problem("a", integrity.CHECKSUM, "bytes changed"))
        return report

    monkeypatch.setattr(integrity, "verify_store", damaged)
    with pytest.raises(StoreError, match="failed verification .*a: checksum"):
        run_export(ExportConfig(mvh_store.uri, tmp_path / "bad", verify=True))
    assert not (tmp_path / "bad").exists()


def test_progress_events_for_import_and_export(mvh_store, tmp_path) -> None:
    rec = Recorder()
    run_export(ExportConfig(mvh_store.uri, tmp_path / "h5"), progress=rec)
    assert rec.count(Event.TOTAL, SLIDES) == 2 == rec.count(Event.ADVANCE, SLIDES)
    rec = Recorder()
    run_export(ExportConfig(mvh_store.uri, tmp_path / "pq", "parquet"), progress=rec)
    assert rec.count(Event.TOTAL, SLIDES) == 2 == rec.count(Event.ADVANCE, SLIDES)
    rec = Recorder()
    run_import(ImportConfig(tmp_path / "h5", str(tmp_path / "d.lance")), progress=rec)
    assert rec.count(Event.TOTAL, FILES) == 2 == rec.count(Event.ADVANCE, FILES)


def test_results_json_is_the_result(tmp_path) -> None:
    folder = trident_slide(tmp_path / "job", "s", 2).parent
    result = do_import(folder, tmp_path / "s.lance")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["imported"] == [{"file": str(folder / "s.h5"), "slide_id": "s", "n_tiles": 2}]
    assert any("10 / magnification" in n for n in data["notes"])
    assert type(result).from_dict(data).to_dict() == data


def test_tile_ids_from_a_file_must_match_its_tiles(tmp_path) -> None:
    path = trident_slide(tmp_path / "job", "s", 3)
    with h5py.File(path, "a") as f:
        f["tile_ids"] = np.array(["a", "b"], dtype=object).astype("S")
    result = do_import(path.parent, tmp_path / "s.lance")
    assert result.exit_code == 1 and "`tile_ids` must hold 3 strings" in result.failed[0].error


def test_float16_store_refuses_features_it_cannot_hold(tmp_path) -> None:
    path = trident_slide(tmp_path / "job", "s", 2)
    with h5py.File(path, "a") as f:
        f["features"][0, 0] = 1e6
    result = run_import(ImportConfig(path.parent, str(tmp_path / "s.lance"), embedding_dtype="float16"))
    assert result.exit_code == 1 and "float16 range" in result.failed[0].error


def test_duplicate_coordinates_fail_that_file(tmp_path) -> None:
    path = trident_slide(tmp_path / "job", "s", 3)
    trident_slide(tmp_path / "job", "t", 2)
    with h5py.File(path, "a") as f:
        f["coords"][1] = f["coords"][0]
    result = do_import(path.parent, tmp_path / "s.lance")
    assert [f.slide_id for f in result.failed] == ["s"] and "share a tile id" in result.failed[0].error
    assert [f.slide_id for f in result.imported] == ["t"]


@pytest.mark.parametrize("key", ["patch_size", "patch_size_level0"])
def test_absurd_tile_sizes_fail_instead_of_wrapping(tmp_path, key) -> None:
    path = trident_slide(tmp_path / "job", "s", 2)
    with h5py.File(path, "a") as f:
        f["coords"].attrs[key] = np.int64(2**40)
    result = do_import(path.parent, tmp_path / "s.lance")
    assert result.exit_code == 1 and key in result.failed[0].error
    assert not EmbeddingStore.exists(tmp_path / "s.lance")


def test_a_job_folder_points_at_its_feature_folders(tmp_path) -> None:
    trident_slide(tmp_path / "job", "s", 2)
    with pytest.raises(UsageError, match=r"20x_256px_0px_overlap/features_uni_v1") as err:
        ImportConfig(tmp_path / "job", str(tmp_path / "s.lance"), "m").files()
    assert "patches" not in str(err.value)  # TRIDENT's coordinate files hold no features


def test_reimport_is_idempotent(tmp_path) -> None:
    folder = trident_slide(tmp_path / "job", "s", 4).parent
    do_import(folder, tmp_path / "s.lance")
    first = EmbeddingStore.open(tmp_path / "s.lance").all_embeddings()
    assert do_import(folder, tmp_path / "s.lance").exit_code == 0
    store = EmbeddingStore.open(tmp_path / "s.lance")
    again = store.all_embeddings()
    assert first[0].equals(again[0]) and (first[1] == again[1]).all() and store.n_tiles == 4


def test_duplicate_coordinates_fail_that_file_even_with_its_own_tile_ids(tmp_path) -> None:
    # Before: 54 tiles at one coordinate were imported when the file named each tile itself.
    path = trident_slide(tmp_path / "job", "s", 54)
    with h5py.File(path, "a") as f:
        f["coords"][:] = f["coords"][0]
        f["tile_ids"] = np.array([f"t{i}" for i in range(54)], dtype=object).astype("S")
    result = do_import(path.parent, tmp_path / "s.lance")
    assert result.exit_code == 1 and [f.slide_id for f in result.failed] == ["s"]
    assert "53 tile(s) repeat another tile's coordinates" in result.failed[0].error
    assert EmbeddingStore.open(tmp_path / "s.lance").slide_ids() == []


def _strings(value: object) -> list[str]:
    """Every string inside an h5 attribute value or a JSON document."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            return [value, *_strings(json.loads(value))] if value[:1] in "{[" else [value]
        except json.JSONDecodeError:
            return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_no_local_path_in_exported_files(tmp_path) -> None:
    # Before: the weights path, the import folder and the slide path were written as given.
    fp = StoreFingerprint(
        model="tiny",
        model_config={},
        weights_sha256="ab" * 32,
        weights_path="/home/me/ckpt/uni.pt",
        embed_dim=DIM,
        tile_px=224,
        mpp=0.5,
        mean=None,
        std=None,
        extra={"imported_from": "/home/me/feats"},
    )
    store = EmbeddingStore.create(tmp_path / "p.lance", fp)
    slide = make_mvh_store(tmp_path / "src.lance")
    record = {"slide_id": "a", "path": "/home/me/slides/a.svs", "width": 4000, "height": 3000, "mpp": 0.25}
    store.add_slide(record, slide.slide_tiles("a"), slide.slide_embeddings("a")[0])
    run_export(ExportConfig(store.uri, tmp_path / "h5"))
    with h5py.File(tmp_path / "h5" / "a.h5", "r") as f:
        found = [s for o in (f, f["features"], f["coords"]) for v in o.attrs.values() for s in _strings(v)]
        shared = json.loads(f.attrs["fingerprint"])
    assert found and not [s for s in found if "/home/me" in s or str(tmp_path) in s]
    assert (shared["weights_path"], shared["extra"]["imported_from"]) == ("uni.pt", "feats")
    assert shared["weights_sha256"] == "ab" * 32
    out = export_parquet(store, tmp_path / "t")
    meta = pq.read_schema(out).metadata
    assert not [s for v in meta.values() for s in _strings(v) if "/home/me" in s]


def test_parquet_export_carries_what_a_second_team_needs(mvh_store, tmp_path) -> None:
    # Before: only the fingerprint; slides without tissue, um/px, level-0 size, versions and card were lost.
    from mvh import __version__

    empty = {"slide_id": "d", "path": "/data/d.svs", "width": 800, "height": 600, "mpp": 0.2527}
    mvh_store.add_slide(
        {**empty, "mpp_source": "openslide"},
        mvh_store.slide_tiles("a").iloc[:0],
        np.empty((0, DIM), np.float32),
    )
    mvh_store.create_tag("v1")
    tagged = EmbeddingStore.open(f"{mvh_store.uri}@v1")
    meta = pq.read_schema(export_parquet(tagged, tmp_path / "pq")).metadata
    values = {k.decode(): json.loads(v) for k, v in meta.items()}
    assert values["mvh.version"] == __version__
    assert values["mvh.store"]["tag"] == "v1" and values["mvh.store"]["version"] == tagged.version
    card = values["mvh.card"]
    assert (card["model"], card["n_slides_done"], card["n_slides_failed"], card["n_tiles"]) == (
        "tiny",
        3,
        1,
        11,
    )
    slides = {s["slide_id"]: s for s in values["mvh.slides"]}
    assert sorted(slides) == ["a", "b", "c", "d"]
    assert (slides["d"]["status"], slides["d"]["n_tiles"]) == ("done", 0)  # no tissue: no rows, listed here
    assert (slides["d"]["width"], slides["d"]["height"], slides["d"]["mpp"]) == (800, 600, 0.2527)
    assert (slides["a"]["width"], slides["a"]["mpp"], slides["a"]["file"]) == (4000, 0.25, "a.svs")
    assert (slides["c"]["status"], slides["c"]["error"]) == ("failed", "no tissue")


def test_unchanged_files_are_not_imported_again(tmp_path) -> None:
    # Before: every re-import re-committed every slide, so the store's index went stale each time.
    from mvh.index.build import IndexBuildConfig, run_index_build
    from mvh.index.index_files import load_index

    folder = trident_slide(tmp_path / "job", "s", 4).parent
    trident_slide(tmp_path / "job", "t", 3, seed=2)
    do_import(folder, tmp_path / "s.lance")
    store = EmbeddingStore.open(tmp_path / "s.lance")
    run_index_build(IndexBuildConfig(store=str(store.uri)))
    versions = store.table_versions()
    again = do_import(folder, tmp_path / "s.lance")
    assert again.exit_code == 0 and again.skipped == ["s", "t"] and again.imported == []
    store = EmbeddingStore.open(tmp_path / "s.lance")
    assert store.table_versions() == versions
    load_index(store)  # not stale
    with h5py.File(folder / "t.h5", "a") as f:
        f["features"][0, 0] += 1.0
        changed_value = float(f["features"][0, 0])
    changed = do_import(folder, tmp_path / "s.lance")
    assert changed.skipped == ["s"] and [f.slide_id for f in changed.imported] == ["t"]
    emb, coords = EmbeddingStore.open(tmp_path / "s.lance").slide_embeddings("t")
    assert emb[(coords == [0, 0]).all(axis=1)][0, 0] == np.float32(changed_value)
