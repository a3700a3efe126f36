"""Interop: TRIDENT/CLAM h5 and Parquet export, h5 import, and the round trip."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from mvh.errors import DataError, UsageError
from mvh.index.interop import export_h5, export_parquet, import_h5
from mvh.index.store import EmbeddingStore, StoreFingerprint

from .test_store import DIM, make_fp, record, tiles_of


@pytest.fixture()
def filled(tmp_path):
    store = EmbeddingStore.create(tmp_path / "src.lance", make_fp())
    rng = np.random.default_rng(0)
    for sid, n in (("a", 7), ("b", 4)):
        store.add_slide(record(sid), tiles_of(sid, n), rng.normal(size=(n, DIM)).astype(np.float32))
    store.add_failed_slide(record("c"), "no tissue")
    return store


def test_h5_layout_is_trident_clam(filled, tmp_path) -> None:
    paths = export_h5(filled, tmp_path / "h5")
    assert sorted(p.name for p in paths) == ["a.h5", "b.h5"]  # failed slide c not exported
    emb, coords = filled.slide_embeddings("a")
    with h5py.File(tmp_path / "h5" / "a.h5", "r") as f:
        np.testing.assert_array_equal(f["features"][()], emb)
        np.testing.assert_array_equal(f["coords"][()], coords)
        assert f["features"].dtype == np.float32 and f["coords"].shape == (7, 2)
        attrs = f["coords"].attrs
        assert attrs["patch_size"] == 224 and attrs["mpp"] == 0.5
        assert attrs["patch_size_level0"] == 448  # 224 px at 0.5 um/px on a 0.25 um/px scan
        assert json.loads(f.attrs["fingerprint"])["model"] == "mv_hybrid_tiny"


def test_export_import_round_trip_equal(filled, tmp_path) -> None:
    export_h5(filled, tmp_path / "h5")
    imported = import_h5(tmp_path / "h5", tmp_path / "dst.lance", "mytool")
    fp = imported.fingerprint
    assert (fp.model, fp.weights_sha256, fp.tile_px, fp.mpp, fp.embed_dim) == (
        "external:mytool",
        "external",
        224,
        0.5,
        DIM,
    )
    assert imported.slide_ids() == filled.slide_ids() == ["a", "b"]
    for sid in ("a", "b"):
        for got, want in zip(imported.slide_embeddings(sid), filled.slide_embeddings(sid), strict=True):
            np.testing.assert_array_equal(got, want)
        cols = ["tile_id", "x", "y", "tile_px", "mpp", "tissue_fraction"]
        assert imported.slide_tiles(sid)[cols].equals(filled.slide_tiles(sid)[cols])
    src = filled.slides(status="done").set_index("slide_id")
    dst = imported.slides().set_index("slide_id")
    for col in ("path", "width", "height", "mpp", "mpp_source", "n_tiles"):
        assert list(dst[col]) == list(src[col]), col


def test_import_plain_clam_files_needs_geometry(tmp_path) -> None:
    folder = tmp_path / "clam"
    folder.mkdir()
    feats = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    with h5py.File(folder / "slide1.h5", "w") as f:
        f["features"] = feats
        f["coords"] = np.array([[0, 0], [512, 0], [0, 512]])
    with pytest.raises(UsageError, match="--mpp"):
        import_h5(folder, tmp_path / "x.lance", "uni")
    store = import_h5(folder, tmp_path / "x.lance", "uni", mpp=0.5, tile_px=256)
    rows = store.slide_tiles("slide1")
    assert list(rows["tile_id"]) == ["slide1:0:0:256", "slide1:512:0:256", "slide1:0:512:256"]
    np.testing.assert_array_equal(store.slide_embeddings("slide1")[0], feats)


def test_import_rejects_malformed_files(tmp_path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    with h5py.File(folder / "s.h5", "w") as f:
        f["features"] = np.zeros((3, 4), np.float32)
    with pytest.raises(DataError, match="coords"):
        import_h5(folder, tmp_path / "x.lance", "t", mpp=0.5, tile_px=224)
    with pytest.raises(UsageError, match="no .h5 files"):
        import_h5(tmp_path / "empty", tmp_path / "y.lance", "t")


def test_parquet_export(filled, tmp_path) -> None:
    out = export_parquet(filled, tmp_path / "pq")
    table = pq.read_table(out)
    assert table.num_rows == 11
    fp = StoreFingerprint.from_dict(json.loads(table.schema.metadata[b"mvh.fingerprint"]))
    assert fp == filled.fingerprint
    rows, emb = filled.all_embeddings(columns=("slide_id", "tile_id"))
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert table.column("tile_id").to_pylist() == list(rows["tile_id"])
    np.testing.assert_array_equal(got, emb)
