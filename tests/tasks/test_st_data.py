"""HEST-layout loading and spot embedding into a store (tiny synthetic cohort, tiny random backbone)."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mvh.errors import DataError, UsageError
from mvh.extractor.embedder import Embedder
from mvh.index.store import EmbeddingStore
from mvh.tasks.st_data import (
    check_split_metadata,
    find_samples,
    load_expression,
    plan_spot_tiles,
    read_meta_csv,
    read_sample,
    sample_thumbnail,
    spot_embeddings,
    sync_store,
)
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
    return [entry["status"] for entry in report.samples]


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
