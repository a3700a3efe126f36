"""HEST-layout loading and spot embedding into a store (tiny synthetic cohort, tiny random backbone)."""

from __future__ import annotations

import hashlib
import json

import anndata
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

from mvh.core.files import sampled_hash
from mvh.errors import DataError, UsageError
from mvh.extractor.embedder import Embedder
from mvh.store import EmbeddingStore
from mvh.tasks.st_data import (
    check_split_metadata,
    find_samples,
    load_expression,
    read_meta_csv,
    read_sample,
    sample_thumbnail,
    spot_embeddings,
)
from mvh.tasks.st_spots import plan_spot_tiles, sync_store
from mvh.tasks.st_synthetic import write_synthetic_st_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_synthetic_st_cohort(tmp_path_factory.mktemp("c"), studies=("A", "B"), samples_per_study=1,
                                     grid=(3, 2), image="both", seed=1)


def _sync(samples, expr, store, factory, drop_bad=False):
    """Plan every sample's spot tiles at the store's geometry and sync the store; statuses per sample."""
    groups = expr.spots.groupby("sample_id", sort=False).indices
    plans = [plan_spot_tiles(s, expr.spots.iloc[groups[s.sample_id]], store.fingerprint.mpp,
                             store.fingerprint.tile_px, drop_bad)[0] for s in samples]
    _, report = sync_store(plans, store, factory)
    return [entry.status for entry in report.samples]


@pytest.fixture(scope="module")
def embedder():
    return Embedder("vit_dinov2_tiny", random_init=True, device="cpu")


def test_find_samples_hest_layout_and_meta(cohort):
    samples, _ = find_samples([cohort.root], cohort.meta)
    assert [s.sample_id for s in samples] == ["A0", "B0"]
    a = samples[0]
    assert a.wsi == cohort.root / "wsis" / "A0.tif" and a.patches == cohort.root / "patches" / "A0.h5"
    assert (a.patient, a.study, a.mpp) == ("PA0", "A", None)
    # One .h5ad given directly finds the same companions.
    single = find_samples([cohort.root / "st" / "B0.h5ad"], cohort.meta)[0][0]
    assert single.wsi == cohort.root / "wsis" / "B0.tif"


def test_meta_aliases_mpp_and_metadata_json(cohort, tmp_path):
    csv = tmp_path / "hest.csv"
    pd.DataFrame({"id": ["A0", "B0"], "patient": ["p", "q"], "dataset_title": ["s1", "s2"],
                  "mpp": [0.25, None]}).to_csv(csv, index=False)
    meta = read_meta_csv(csv)
    assert meta.rows.loc["A0", "study"] == "s1" and meta.rows.loc["A0", "mpp"] == 0.25
    assert meta.study_column == "dataset_title"
    (cohort.root / "metadata").mkdir(exist_ok=True)
    (cohort.root / "metadata" / "B0.json").write_text(json.dumps({"pixel_size_um_estimated": 0.51}))
    try:
        samples = {s.sample_id: s for s in find_samples([cohort.root], csv)[0]}
    finally:
        (cohort.root / "metadata" / "B0.json").unlink()
    assert samples["A0"].mpp == 0.25 and samples["B0"].mpp == 0.51


def test_layout_errors(cohort, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"sample_id": ["A0"], "patient": ["p"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="study"):
        find_samples([cohort.root], bad)
    only_a = tmp_path / "a.csv"
    pd.DataFrame({"sample_id": ["A0"], "patient": ["p"], "study": ["s"]}).to_csv(only_a, index=False)
    with pytest.raises(DataError, match="no row for sample 'B0'"):
        find_samples([cohort.root], only_a)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    anndata.AnnData(X=np.ones((2, 2), np.float32)).write_h5ad(lonely / "x.h5ad")
    with pytest.raises(DataError, match="no WSI and no patches"):
        find_samples([lonely])
    with pytest.raises(UsageError, match="--meta"):
        check_split_metadata(find_samples([cohort.root])[0], ["loso"])


def test_read_sample_obs_columns_and_in_tissue(tmp_path):
    obs = pd.DataFrame({"pxl_col_in_fullres": [10.0, 20.0, 30.0], "pxl_row_in_fullres": [5.0, 6.0, 7.0],
                        "in_tissue": [1, 0, 1]}, index=["a", "b", "c"])
    ad = anndata.AnnData(X=sp.csr_matrix(np.arange(6, dtype=np.float32).reshape(3, 2)), obs=obs,
                         var=pd.DataFrame(index=["G1", "G2"]))
    ad.write_h5ad(tmp_path / "s.h5ad")
    (tmp_path / "s.h5").touch()
    sample = find_samples([tmp_path])[0][0]
    spots, counts, genes = read_sample(sample)
    assert spots["barcode"].tolist() == ["a", "c"]
    assert spots[["x", "y"]].to_numpy().tolist() == [[10.0, 5.0], [30.0, 7.0]]
    assert counts.toarray().tolist() == [[0, 1], [4, 5]] and genes == ["G1", "G2"]


def test_load_expression_stacks_shared_genes(cohort):
    samples, _ = find_samples([cohort.root], cohort.meta)
    expr = load_expression(samples)
    assert expr.counts.shape == (12, 12) and expr.genes[0] == "SIG0"
    assert expr.spots["study"].tolist() == ["A"] * 6 + ["B"] * 6
    first = anndata.read_h5ad(samples[0].h5ad)
    np.testing.assert_array_equal(expr.counts[:6].toarray(), first.X.toarray())


def test_wsi_and_patches_embeddings_agree_and_rerun_reuses(cohort, embedder, tmp_path):
    import h5py

    samples, _ = find_samples([cohort.root], cohort.meta)
    expr = load_expression(samples)
    fp = embedder.fingerprint(mpp=0.5, tile_px=224)
    wsi_store = EmbeddingStore.create(tmp_path / "wsi.lance", fp)
    assert _sync(samples, expr, wsi_store, lambda: embedder) == ["embedded", "embedded"]
    calls = []
    version = wsi_store.version
    assert _sync(samples, expr, wsi_store, lambda: calls.append(1)) == ["reused", "reused"] and not calls
    assert wsi_store.version == version

    patch_samples = [type(s)(s.sample_id, s.h5ad, None, s.patches, s.patient, s.study) for s in samples]
    patch_store = EmbeddingStore.create(tmp_path / "patches.lance", fp)
    _sync(patch_samples, expr, patch_store, lambda: embedder)

    X_wsi, found_wsi = spot_embeddings(wsi_store, expr.spots)
    X_pat, found_pat = spot_embeddings(patch_store, expr.spots)
    assert found_wsi.all() and found_pat.all()
    # Independent reference: embed the patch images of sample B0 directly, in barcode order.
    with h5py.File(cohort.root / "patches" / "B0.h5") as f:
        imgs, codes = f["img"][:], [b[0].decode() for b in f["barcode"][:]]
    rows = expr.spots.index[expr.spots["sample_id"] == "B0"]
    order = [codes.index(b) for b in expr.spots.loc[rows, "barcode"]]
    np.testing.assert_allclose(X_pat[rows], embedder.embed_images(imgs[order]), rtol=1e-4, atol=1e-4)
    # The WSI tiles (JPEG pyramid) centred on the spots are the same squares as the patches.
    cos = (X_wsi * X_pat).sum(1) / np.linalg.norm(X_wsi, axis=1) / np.linalg.norm(X_pat, axis=1)
    assert cos.min() > 0.98
    tiles = wsi_store.slide_tiles("A0")
    assert set(tiles["tile_id"]) == set(expr.spots.loc[expr.spots["sample_id"] == "A0", "barcode"])


def test_thumbnail_from_wsi(cohort):
    thumb, scale = sample_thumbnail(find_samples([cohort.root])[0][0], max_size=128)
    assert thumb.ndim == 3 and max(thumb.shape[:2]) <= 128
    assert scale == pytest.approx(thumb.shape[1] / (3 * 224))


def _hest_meta_csv(path, rows):
    """A metadata CSV with HEST's own columns (HEST_v1_1_0.csv: id, patient, dataset_title,
    pixel_size_um_estimated, ...), empty cells where HEST leaves them empty."""
    pd.DataFrame(rows, columns=["dataset_title", "id", "organ", "patient", "pixel_size_um_embedded",
                                "pixel_size_um_estimated", "source"]).to_csv(path, index=False)
    return path


def test_hest_csv_empty_patient_is_its_own_patient_and_dataset_title_is_the_study(cohort, tmp_path):
    csv = _hest_meta_csv(tmp_path / "HEST_v1_1_0.csv", [
        ["Study one", "A0", "Bowel", "", "0.2", "0.26", "10x"],
        ["Study two", "B0", "Bowel", "", "", "", "10x"],
    ])
    samples, notes = find_samples([cohort.root], csv)
    assert [(s.patient, s.patient_source, s.study) for s in samples] == [
        ("own:A0", "own", "Study one"), ("own:B0", "own", "Study two")]
    assert any("empty patient cell" in n and "A0, B0" in n for n in notes)
    assert any("column 'dataset_title'" in n for n in notes)
    # Two distinct own-patients: the patient split has two groups (the bug merged them into one "nan").
    expr = load_expression(samples)
    assert expr.spots["patient"].nunique() == 2


def test_mpp_from_csv_estimate_when_metadata_json_absent(cohort, tmp_path):
    csv = _hest_meta_csv(tmp_path / "m.csv", [
        ["S1", "A0", "x", "p1", "0.2", "0.26", "s"],
        ["S2", "B0", "x", "p2", "", "", "s"],
    ])
    samples = {s.sample_id: s for s in find_samples([cohort.root], csv)[0]}
    assert samples["A0"].mpp == 0.26 and samples["A0"].mpp_source == "m.csv pixel_size_um_estimated"
    assert samples["B0"].mpp is None and samples["B0"].mpp_source is None  # the slide's own metadata
    (cohort.root / "metadata").mkdir(exist_ok=True)
    (cohort.root / "metadata" / "A0.json").write_text(json.dumps({"pixel_size_um_estimated": 0.3}))
    try:
        samples, notes = find_samples([cohort.root], csv)
    finally:
        (cohort.root / "metadata" / "A0.json").unlink()
    assert samples[0].mpp == 0.3 and samples[0].mpp_source == "metadata/A0.json pixel_size_um_estimated"
    assert any("metadata/A0.json" in n for n in notes)


def test_missing_mpp_names_the_real_option(tmp_path):
    from PIL import Image

    from mvh.errors import MissingMppError

    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(tmp_path / "s.tif")  # no resolution tags
    ad = anndata.AnnData(X=np.ones((1, 2), np.float32), var=pd.DataFrame(index=["G1", "G2"]))
    ad.obsm["spatial"] = np.array([[150.0, 150.0]])
    ad.write_h5ad(tmp_path / "s.h5ad")
    sample = find_samples([tmp_path])[0][0]
    spots, _, _ = read_sample(sample)
    with pytest.raises(MissingMppError) as err:
        plan_spot_tiles(sample, spots, 0.5, 224, drop_bad=False)
    assert "--slide-mpp" not in str(err.value) and "--meta" in str(err.value) and "mpp" in str(err.value)


def _with_coords(cohort, tmp_path, sample_id, change):
    """A copy of the cohort whose sample's spot centres are changed by `change(xy) -> xy`."""
    import shutil

    root = tmp_path / "moved"
    shutil.copytree(cohort.root, root)
    path = root / "st" / f"{sample_id}.h5ad"
    ad = anndata.read_h5ad(path)
    ad.obsm["spatial"] = change(np.asarray(ad.obsm["spatial"], dtype=np.float64))
    ad.write_h5ad(path)
    return root


def test_bad_spot_coordinates_refused_or_dropped(cohort, tmp_path):
    def spoil(xy):
        xy[0] = np.nan
        xy[1] += 100_000
        return xy

    root = _with_coords(cohort, tmp_path, "A0", spoil)
    samples, _ = find_samples([root])
    spots, _, _ = read_sample(samples[0])
    with pytest.raises(DataError, match=r"2 spot\(s\) with bad coordinates.*--drop-bad-spots") as err:
        plan_spot_tiles(samples[0], spots, 0.5, 224, drop_bad=False)
    assert spots["barcode"][0] in str(err.value) and spots["barcode"][1] in str(err.value)
    tiles, dropped = plan_spot_tiles(samples[0], spots, 0.5, 224, drop_bad=True)
    assert [(d.barcode, d.reason) for d in dropped] == [
        (spots["barcode"][0], "non-finite coordinate"),
        (spots["barcode"][1], "outside the slide (672 x 448 px)"),
    ]
    assert list(tiles.barcodes) == spots["barcode"][2:].tolist()
    # Centre - 112 (HEST's top-left convention at 0.5 um/px on a 0.5 um/px slide).
    assert tiles.x.tolist() == (np.floor(spots["x"][2:]) - 112).astype(int).tolist()


def test_moved_spots_are_embedded_again_and_said_so(cohort, embedder, tmp_path):
    samples, _ = find_samples([cohort.root], cohort.meta)
    expr = load_expression(samples)
    store = EmbeddingStore.create(tmp_path / "s.lance", embedder.fingerprint(mpp=0.5, tile_px=224))
    _sync(samples, expr, store, lambda: embedder)

    def shift(xy):
        xy[:3, 0] += 50  # three spots of A0 move by 50 px: same barcodes, other tissue
        return xy

    root = _with_coords(cohort, tmp_path, "A0", shift)
    moved, _ = find_samples([root], cohort.meta)
    moved_expr = load_expression(moved)
    groups = moved_expr.spots.groupby("sample_id", sort=False).indices
    plans = [plan_spot_tiles(s, moved_expr.spots.iloc[groups[s.sample_id]], 0.5, 224, False)[0]
             for s in moved]
    embeddings, report = sync_store(plans, store, lambda: embedder)
    by_id = {e.sample_id: e for e in report.samples}
    assert by_id["A0"].status == "updated"
    assert by_id["A0"].n_embedded == 3 and by_id["A0"].n_reused == 3
    assert "3 spot(s) moved" in " ".join(by_id["A0"].reasons)
    assert by_id["B0"].status == "reused" and by_id["B0"].n_embedded == 0
    assert any("A0" in n and "3 spot(s) embedded again" in n for n in report.notes)
    assert by_id["A0"].h5ad_sha256 != sha256_of(cohort.root / "st" / "A0.h5ad")
    # Independent reference: a fresh store embedding the moved cohort from scratch.
    fresh = EmbeddingStore.create(tmp_path / "fresh.lance", embedder.fingerprint(mpp=0.5, tile_px=224))
    ref, _ = sync_store(plans, fresh, lambda: embedder)
    np.testing.assert_allclose(embeddings["A0"], ref["A0"], rtol=1e-5, atol=1e-5)
    stored = store.slide_tiles("A0").set_index("tile_id").loc[list(plans[0].barcodes)]
    assert stored["x"].tolist() == plans[0].x.tolist()


def sha256_of(path):
    from mvh.core.files import sha256_file

    return sha256_file(path)


def test_sync_reads_the_store_in_one_scan_and_checks_finiteness(cohort, embedder, tmp_path):
    from mvh.errors import StoreError

    samples, _ = find_samples([cohort.root], cohort.meta)
    expr = load_expression(samples)
    store = EmbeddingStore.create(tmp_path / "s.lance", embedder.fingerprint(mpp=0.5, tile_px=224))
    _sync(samples, expr, store, lambda: embedder)
    calls = {"all_embeddings": 0, "slide_embeddings": 0, "slide_tiles": 0, "scan_tiles": 0}
    for name in calls:
        original = getattr(store, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(store, name, counted)
    assert _sync(samples, expr, store, lambda: None) == ["reused", "reused"]
    assert calls == {"all_embeddings": 0, "slide_embeddings": 0, "slide_tiles": 0, "scan_tiles": 1}
    X, found = spot_embeddings(store, expr.spots)  # one streamed scan of the spots' samples
    assert found.all() and calls["all_embeddings"] == 0 and calls["scan_tiles"] == 2
    scan = EmbeddingStore.scan_tiles

    def rotten(*args, **kwargs):  # the first embedding value of every batch read as NaN (bit rot)
        for index, batch in scan(store, *args, **kwargs):
            values = batch.column("embedding").flatten().to_numpy(zero_copy_only=False).copy()
            values[0] = np.nan
            kind = batch.column("embedding").type.value_type
            column = pa.FixedSizeListArray.from_arrays(pa.array(values, kind), store.dim)
            yield index, batch.set_column(batch.schema.get_field_index("embedding"), "embedding", column)

    store.scan_tiles = rotten
    with pytest.raises(StoreError, match="non-finite"):
        _sync(samples, expr, store, lambda: None)


def test_recorded_image_or_h5ad_change_is_detected_through_slide_attrs(cohort, embedder, tmp_path):
    samples, _ = find_samples([cohort.root], cohort.meta)
    expr = load_expression(samples)
    store = EmbeddingStore.create(tmp_path / "s.lance", embedder.fingerprint(mpp=0.5, tile_px=224))
    _sync(samples, expr, store, lambda: embedder)
    groups = expr.spots.groupby("sample_id", sort=False).indices
    plans = [plan_spot_tiles(s, expr.spots.iloc[groups[s.sample_id]], 0.5, 224, False)[0] for s in samples]
    # The slides' attrs as a store with the `slide_attrs` column keeps them: A0 was cut from another image
    # file, B0's h5ad had another hash; positions and barcodes are unchanged.
    image = {**plans[0].identity["image"], "file_hash": "sha256-3mib:" + "0" * 64}
    a0 = {**plans[0].identity, "image": image}
    b0 = {**plans[1].identity, "h5ad_sha256": "f" * 64}
    slides = store.slides().assign(slide_attrs=[json.dumps({"st": a0}), json.dumps({"st": b0})])
    store.slides = lambda status=None: slides
    _, report = sync_store(plans, store, lambda: embedder)
    a, b = report.samples
    assert a.n_embedded == 6 and "differs from the one embedded" in a.reasons[0]
    assert b.n_embedded == 0 and b.n_reused == 6 and "A0" not in b.reasons[0]
    assert "B0.h5ad changed since it was embedded" in b.reasons[0]


def test_sample_ids_are_checked_as_slide_ids(tmp_path):
    anndata.AnnData(X=np.ones((1, 1), np.float32)).write_h5ad(tmp_path / " lead.h5ad")
    (tmp_path / " lead.h5").touch()
    with pytest.raises(UsageError, match="white space"):
        find_samples([tmp_path])


def test_samples_sharing_barcodes_keep_their_own_embeddings(cohort, embedder, tmp_path):
    """Visium barcodes repeat across samples: spots are keyed by (sample, barcode), never barcode alone."""
    import shutil

    root = tmp_path / "shared"
    shutil.copytree(cohort.root, root)
    for sid in ("A0", "B0"):
        path = root / "st" / f"{sid}.h5ad"
        ad = anndata.read_h5ad(path)
        ad.obs_names = [name.split("-", 1)[1] for name in ad.obs_names]  # "A0-r0c0" -> "r0c0"
        ad.write_h5ad(path)
    samples = [type(s)(s.sample_id, s.h5ad, s.wsi, None, s.patient, s.study)
               for s in find_samples([root], cohort.meta)[0]]
    expr = load_expression(samples)
    assert expr.spots["barcode"].duplicated().any()
    store = EmbeddingStore.create(tmp_path / "s.lance", embedder.fingerprint(mpp=0.5, tile_px=224))
    _sync(samples, expr, store, lambda: embedder)
    X, found = spot_embeddings(store, expr.spots)
    assert found.all()
    a0 = expr.spots.index[expr.spots["sample_id"] == "A0"]
    b0 = expr.spots.index[expr.spots["sample_id"] == "B0"]
    for sid, rows in (("A0", a0), ("B0", b0)):  # independent read: that slide's own tiles, by tile id
        emb, _ = store.slide_embeddings(sid)
        by_tile = dict(zip(store.slide_tiles(sid)["tile_id"], emb, strict=True))
        expected = np.stack([by_tile[b] for b in expr.spots.loc[rows, "barcode"]])
        np.testing.assert_array_equal(X[rows], expected)
    assert not np.allclose(X[a0], X[b0])  # other slides, other images: other embeddings
    # Each sample's stored tiles are its own spots, and a rerun reuses both.
    assert sorted(store.slide_tiles("A0")["tile_id"]) == sorted(expr.spots.loc[a0, "barcode"])
    assert _sync(samples, expr, store, lambda: None) == ["reused", "reused"]


def test_a_slide_of_the_same_id_with_other_tiles_is_never_overwritten(cohort, embedder, tmp_path):
    samples, _ = find_samples([cohort.root], cohort.meta)
    expr = load_expression(samples)
    store = EmbeddingStore.create(tmp_path / "s.lance", embedder.fingerprint(mpp=0.5, tile_px=224))
    grid = pd.DataFrame({"tile_id": ["A0:0:0:224", "A0:224:0:224"], "x": [0, 224], "y": [0, 0],
                         "tile_px": 224, "mpp": 0.5, "tissue_fraction": 1.0})
    store.add_slide({"slide_id": "A0", "path": "A0.svs"}, grid, np.ones((2, embedder.dim), np.float32))
    version = store.version
    with pytest.raises(UsageError, match="slide 'A0' holds 2 tiles that are not spots.*--store-dir"):
        _sync(samples, expr, store, lambda: embedder)
    assert store.version == version and sorted(store.slide_tiles("A0")["tile_id"]) == sorted(grid["tile_id"])


def test_unwritable_store_is_refused_before_any_embedding(cohort, tmp_path, embedder):
    from mvh.errors import StoreError

    samples, _ = find_samples([cohort.root], cohort.meta)
    expr = load_expression(samples)
    store = EmbeddingStore.create(tmp_path / "s.lance", embedder.fingerprint(mpp=0.5, tile_px=224))

    def read_only():
        raise StoreError(f"store {store.uri} is read-only")

    store.check_writable = read_only
    built = []
    with pytest.raises(StoreError, match="read-only"):
        _sync(samples, expr, store, lambda: built.append(1) or embedder)
    assert built == []


def _legacy_image_key(path) -> dict:
    """The image record ST stores wrote before `sampled_hash`: sha256 of the first MiB and the last MiB."""
    data = path.read_bytes()
    mib = 1 << 20
    tail = data[max(len(data) - mib, mib) :] if len(data) > mib else b""
    edge = hashlib.sha256(data[:mib] + tail).hexdigest()
    return {"name": path.name, "size": len(data), "edge_sha256": edge}


def test_image_records_use_the_core_file_key_and_older_records_are_still_recognised(
    cohort, embedder, tmp_path
):
    samples, _ = find_samples([cohort.root], cohort.meta)
    expr = load_expression(samples)
    store = EmbeddingStore.create(tmp_path / "s.lance", embedder.fingerprint(mpp=0.5, tile_px=224))
    _sync(samples, expr, store, lambda: embedder)
    recorded = [json.loads(text)["st"] for text in store.slides()["slide_attrs"]]
    for sample, attrs in zip(samples, recorded, strict=True):
        image = sample.wsi if sample.wsi is not None else sample.patches
        assert attrs["image"] == {"name": image.name, "size": image.stat().st_size,
                                  "file_hash": sampled_hash(image)}
        assert attrs["image"]["file_hash"].startswith("sha256-3mib:")
    groups = expr.spots.groupby("sample_id", sort=False).indices
    plans = [plan_spot_tiles(s, expr.spots.iloc[groups[s.sample_id]], 0.5, 224, False)[0] for s in samples]
    # A0 recorded the old way from the same file (reused, not rewritten); B0 the old way from another file.
    old = [
        {**attrs, "image": _legacy_image_key(plan.image)} for attrs, plan in zip(recorded, plans, strict=True)
    ]
    old[1]["image"]["edge_sha256"] = "0" * 64
    slides = store.slides().assign(slide_attrs=[json.dumps({"st": attrs}) for attrs in old])
    store.slides = lambda status=None: slides
    version = store.version
    _, report = sync_store(plans[:1], store, lambda: pytest.fail("a recognised record needs no embedder"))
    (a,) = report.samples
    assert (a.status, a.n_reused, a.n_embedded, a.reasons) == ("reused", 6, 0, [])
    assert store.version == version
    _, report = sync_store(plans[1:], store, lambda: embedder)
    (b,) = report.samples
    assert b.n_embedded == 6 and "differs from the one embedded" in b.reasons[0]
    assert b.image.file_hash == sampled_hash(plans[1].image)
