"""ST regression on arrays: known answers, HVG selection without leakage, results structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from mvh.errors import DataError, UsageError
from mvh.tasks.st import STConfig
from mvh.tasks.st_eval import evaluate_fold, evaluate_st, robustness_drop, table_rows
from mvh.tasks.st_model import gene_variances, log1p_counts, make_regressor, select_hvg


def _spots(n_per=40, studies=("A", "B", "C"), samples_per_study=2):
    rows = []
    for s in studies:
        for j in range(samples_per_study):
            for i in range(n_per):
                rows.append({"sample_id": f"{s}{j}", "patient": f"{s}{j}", "study": s,
                             "barcode": f"bc{i}", "x": float(i % 8) * 100, "y": float(i // 8) * 100})
    return pd.DataFrame(rows)


def test_linear_genes_are_recovered_exactly():
    rng = np.random.default_rng(0)
    spots = _spots()
    X = rng.normal(size=(len(spots), 24)).astype(np.float32)
    W = rng.normal(size=(24, 6))
    counts = np.expm1(X @ W * 0.3 + 3.0)  # log1p(counts) is linear in the embedding
    genes = [f"g{i}" for i in range(6)]
    cfg = STConfig(split="random", folds=4, genes=genes, pca=False)
    res, held = evaluate_st({"lin": X}, counts, genes, spots, cfg)
    r = res["models"]["lin"]["random"]
    assert r["pcc"]["mean"] > 0.999
    assert len(r["pcc"]["folds"]) == 4
    assert set(r["genes"]) == set(genes)
    assert all(v > 0.999 for v in r["genes"].values())
    assert held[0].measured.shape == held[0].predicted.shape


def test_noise_embedding_gives_no_signal():
    rng = np.random.default_rng(1)
    spots = _spots()
    X = rng.normal(size=(len(spots), 16)).astype(np.float32)
    counts = rng.poisson(5.0, size=(len(spots), 10))
    genes = [f"g{i}" for i in range(10)]
    res, _ = evaluate_st({"noise": X}, counts, genes, spots, STConfig(split="random", folds=3, genes=genes))
    assert abs(res["models"]["noise"]["random"]["pcc"]["mean"]) < 0.15


def test_hest_pipeline_matches_reference_composition():
    rng = np.random.default_rng(2)
    Xtr, Xte = rng.normal(size=(300, 40)), rng.normal(size=(50, 40))
    ytr = rng.normal(size=(300, 7))
    model = make_regressor("ridge", n_components=16).fit(Xtr, ytr)
    sc = StandardScaler().fit(Xtr)
    pca = PCA(16).fit(sc.transform(Xtr))
    ridge = Ridge(alpha=100 / (16 * 7), fit_intercept=False).fit(pca.transform(sc.transform(Xtr)), ytr)
    # HEST's coefficients exactly; predictions carry the training mean HEST's intercept-free fit drops
    np.testing.assert_allclose(model.named_steps["head"].ridge_.coef_, ridge.coef_, rtol=1e-6, atol=1e-10)
    ref = ridge.predict(pca.transform(sc.transform(Xte))) + ytr.mean(axis=0)
    np.testing.assert_allclose(model.predict(Xte), ref, rtol=1e-6, atol=1e-8)
    with_intercept = Ridge(alpha=100 / (16 * 7)).fit(pca.transform(sc.transform(Xtr)), ytr)
    expected = with_intercept.predict(pca.transform(sc.transform(Xte)))
    np.testing.assert_allclose(model.predict(Xte), expected, atol=1e-8)
    assert model.named_steps["head"].alpha_ == pytest.approx(100 / (16 * 7))


@pytest.mark.parametrize("kind", ["ridge-cv", "knn"])
def test_alternative_regressors_learn(kind):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 8))
    y = np.stack([X[:, 0], X[:, 1] - X[:, 2]], axis=1)
    model = make_regressor(kind, pca=False).fit(X[:300], y[:300])
    pred = model.predict(X[300:])
    assert np.corrcoef(pred[:, 0], y[300:, 0])[0, 1] > 0.8


def test_hvg_selection_never_sees_test_spots():
    spots = _spots(n_per=30)
    n = len(spots)
    rng = np.random.default_rng(4)
    counts = rng.poisson(2.0, size=(n, 8)).astype(np.float64)
    studies = spots["study"].to_numpy()
    # One gene per study, hugely variable inside that study only and constant (zero) elsewhere.
    leak = np.zeros((n, 3))
    for j, s in enumerate("ABC"):
        m = int((studies == s).sum())
        leak[studies == s, j] = rng.poisson(200.0, size=m) * rng.integers(0, 2, m)
    counts = sp.csr_matrix(np.hstack([counts, leak]))
    genes = [f"g{i}" for i in range(8)] + ["only_A", "only_B", "only_C"]
    X = rng.normal(size=(n, 6)).astype(np.float32)
    res, _ = evaluate_st({"m": X}, counts, genes, spots, STConfig(split="loso", top_genes=3, seed=0))
    for fold in res["settings"]["folds_by_split"]["loso"]:
        held_out = fold["name"].split("=")[1]
        assert f"only_{held_out}" not in fold["genes"]
        # The other two study genes are in training and are the most variable: they are chosen.
        assert {f"only_{s}" for s in "ABC" if s != held_out} <= set(fold["genes"])
    # Direct check on the selector: rows of study A alone pick only_A first.
    rows_a = np.flatnonzero(studies == "A")
    assert 8 in select_hvg(log1p_counts(counts), rows_a, 1)


def test_compare_reports_drop_and_results_structure():
    rng = np.random.default_rng(5)
    spots = _spots()
    X = rng.normal(size=(len(spots), 12)).astype(np.float32)
    counts = np.expm1(np.clip(X[:, :4] + 2 + 0.3 * rng.normal(size=(len(spots), 4)), 0, None))
    genes = ["a", "b", "c", "d"]
    cfg = STConfig(folds=3, genes=genes)
    models = {"m1": X, "m2": X[:, ::-1].copy()}
    res, held = evaluate_st(models, counts, genes, spots, cfg, splits=["random", "loso"])
    for m in ("m1", "m2"):
        entry = res["models"][m]
        for split in ("random", "loso"):
            assert set(entry[split]) >= {"pcc", "pcc10", "mae", "mse", "genes"}
            assert set(entry[split]["pcc"]) == {"mean", "std", "folds"}
        ratio = entry["loso"]["pcc"]["mean"] / entry["random"]["pcc"]["mean"]
        assert entry["drop"] == pytest.approx(1 - ratio)
    assert res["settings"]["seed"] == 0 and res["settings"]["genes"] == genes
    assert len(table_rows(res["models"])) == 2
    assert len(held) == 4


def test_drop_and_errors():
    assert robustness_drop(0.5, 0.4) == pytest.approx(0.2)
    assert np.isnan(robustness_drop(0.0, 0.4))
    spots = _spots(n_per=5)
    with pytest.raises(DataError, match="genes not in"):
        evaluate_st({"m": np.zeros((len(spots), 3))}, np.ones((len(spots), 2)), ["a", "b"], spots,
                    STConfig(genes=["zz"], folds=2))
    with pytest.raises(DataError, match="embeddings"):
        evaluate_st({"m": np.zeros((3, 3))}, np.ones((len(spots), 2)), ["a", "b"], spots, STConfig(folds=2))


def test_gene_constant_in_a_test_fold_is_nan_and_named():
    rng = np.random.default_rng(6)
    spots = _spots(n_per=20)
    X = rng.normal(size=(len(spots), 10)).astype(np.float32)
    counts = np.expm1(np.clip(X[:, :2] + 2, 0, None))
    counts[spots["study"].to_numpy() == "A", 1] = 0.0  # gene "b" is flat in study A
    res, _ = evaluate_st({"m": X}, counts, ["a", "b"], spots, STConfig(split="loso", genes=["a", "b"]))
    r = res["models"]["m"]["loso"]
    assert r["nan_genes_per_fold"] == [["b"], [], []] and r["n_nan_genes"] == 1
    assert np.isnan(r["genes_per_fold"][0]["b"]) and np.isfinite(r["genes_per_fold"][1]["b"])
    assert r["pcc"]["folds"][0] == pytest.approx(r["genes_per_fold"][0]["a"])
    assert np.isfinite(r["genes"]["b"])  # averaged over the folds where it is defined
    assert any("b (study=A)" in n for n in res["notes"])  # named in a printed note too
    assert table_rows(res["models"])[0]["loso"]["n_nan_genes"] == 1


def test_gene_variances_sparse_equals_dense_numpy():
    rng = np.random.default_rng(7)
    counts = rng.poisson(0.7, size=(60, 9)).astype(np.float32)
    rows = np.arange(0, 60, 3)
    ref = np.log1p(counts[rows].astype(np.float64)).var(axis=0)
    np.testing.assert_allclose(gene_variances(log1p_counts(counts), rows), ref, rtol=1e-5)
    np.testing.assert_allclose(gene_variances(log1p_counts(sp.csr_matrix(counts)), rows), ref, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"split": "spots"}, "--split"),
        ({"compare": ["random", "random"]}, "--compare"),
        ({"folds": 1}, "--folds"),
        ({"top_genes": 0}, "--top-genes"),
        ({"regressor": "svm"}, "--regressor"),
        ({"hest_exact": True, "regressor": "knn"}, "--hest-exact"),
        ({"hest_exact": True, "pca": False}, "--hest-exact"),
        ({"batch_size": 0}, "--batch-size"),
        ({"workers": -1}, "--workers"),
        ({"genes": ["a", "a"]}, "twice"),
        ({"inputs": ["/nonexistent/cohort"]}, "/nonexistent/cohort"),
        ({"meta": "/nonexistent/meta.csv"}, "--meta"),
    ],
)
def test_config_validates_on_construction(kwargs, flag):
    with pytest.raises(UsageError, match=flag):
        STConfig(**kwargs)


def test_config_needs_a_model_for_inputs(tmp_path):
    with pytest.raises(UsageError, match="no model given"):
        STConfig(inputs=[tmp_path])


def test_default_split_is_patient_kfold_grouped_by_patient():
    assert STConfig().splits == ["patient"]
    rng = np.random.default_rng(8)
    spots = _spots(n_per=10, studies=("A", "B", "C", "D"), samples_per_study=2)
    # 8 samples of 7 patients (two samples share a patient): 5 folds by default.
    spots["patient"] = spots["sample_id"].replace({"B1": "B0"})
    X = rng.normal(size=(len(spots), 6)).astype(np.float32)
    counts = rng.poisson(3.0, size=(len(spots), 5))
    res, _ = evaluate_st({"m": X}, counts, list("abcde"), spots, STConfig(genes=list("abcde")))
    folds = res["settings"]["folds_by_split"]["patient"]
    how = res["settings"]["how_by_split"]["patient"]
    assert len(folds) == 5 and "5-fold grouped by patient over 7 patients" in how
    tested = [s for f in folds for s in f["test_samples"]]
    assert sorted(tested) == sorted(spots["sample_id"].unique())  # every sample tested exactly once
    fold_of = {s: i for i, f in enumerate(folds) for s in f["test_samples"]}
    assert fold_of["B0"] == fold_of["B1"]  # one patient never straddles folds
    assert res["models"]["m"]["patient"]["level"].startswith("patient-level")
    # Three patients: one fold per patient (leave-one-patient-out), as HEST-Benchmark's small tasks.
    few = spots[spots["study"].isin(["A", "B"])].reset_index(drop=True)
    few["patient"] = few["sample_id"].replace({"B1": "B0"})
    res3, _ = evaluate_st({"m": X[: len(few)]}, counts[: len(few)], list("abcde"), few,
                          STConfig(genes=list("abcde")))
    assert "leave-one-patient-out" in res3["settings"]["how_by_split"]["patient"]
    patient_of = dict(zip(few["sample_id"], few["patient"], strict=True))
    folds3 = res3["settings"]["folds_by_split"]["patient"]
    tested = [{patient_of[s] for s in f["test_samples"]} for f in folds3]
    assert sorted(map(sorted, tested)) == [["A0"], ["A1"], ["B0"]]


def test_random_split_is_labelled_spot_level():
    rng = np.random.default_rng(9)
    spots = _spots(n_per=12)
    X = rng.normal(size=(len(spots), 6)).astype(np.float32)
    counts = rng.poisson(3.0, size=(len(spots), 3))
    res, _ = evaluate_st({"m": X}, counts, list("abc"), spots, STConfig(split="random", genes=list("abc")))
    assert res["models"]["m"]["random"]["level"].startswith("spot-level")
    assert res["settings"]["levels"]["random"].startswith("spot-level")
    assert "spot-level" in res["settings"]["how_by_split"]["random"]


def _hest_reference(X_train, X_test, counts_train, counts_test, seed, n_components):
    """HEST-Benchmark's `predict_single_split` + `train_test_reg` lines (mahmoodlab/HEST, src/hest/bench/
    benchmark.py and trainer.py), re-typed: log1p float64 targets, StandardScaler -> PCA(random_state=seed)
    -> torch.Tensor -> Ridge(lsqr) without intercept; scipy pearsonr per gene; np.mean over genes."""
    import torch
    from scipy.stats import pearsonr
    from sklearn.pipeline import Pipeline

    y_train = np.log1p(counts_train.astype(np.float64))
    y_test = np.log1p(counts_test.astype(np.float64))
    pipe = Pipeline([("scaler", StandardScaler()),
                     ("PCA", PCA(n_components=n_components, random_state=seed, svd_solver="randomized"))])
    X_train, X_test = torch.Tensor(pipe.fit_transform(X_train)), torch.Tensor(pipe.transform(X_test))
    alpha = 100 / (X_train.shape[1] * y_train.shape[1])
    reg = Ridge(solver="lsqr", alpha=alpha, random_state=seed, fit_intercept=False, max_iter=1000)
    reg.fit(X_train, y_train)
    preds = reg.predict(X_test)
    r = [pearsonr(y_test[:, g], preds[:, g])[0] for g in range(y_test.shape[1])]
    return preds, np.array(r), float(np.mean(r))


def test_hest_exact_reproduces_hest_bit_for_bit():
    from mvh.tasks.splits import Fold

    rng = np.random.default_rng(10)
    n, d, g = 700, 300, 6
    latent = rng.normal(size=(n, 4))
    X = (latent @ rng.normal(size=(4, d)) + rng.normal(size=(n, d))).astype(np.float32)
    rate = np.exp(np.clip(0.8 + 0.5 * latent @ rng.normal(size=(4, g)), -3, 3))
    counts = rng.poisson(rate).astype(np.float32)
    train, test = np.arange(0, 450), np.arange(450, n)
    cfg = STConfig(genes=[f"g{i}" for i in range(g)], hest_exact=True, seed=1)
    fold = Fold(0, "split0", train, test)
    metrics, _, y_pred = evaluate_fold(X, log1p_counts(counts), counts, np.arange(g), fold, cfg)
    preds, r, mean = _hest_reference(X[train], X[test], counts[train], counts[test], seed=1, n_components=256)
    assert np.array_equal(y_pred, preds)
    assert np.array_equal(metrics["per_gene"], r) and metrics["pcc"] == mean
    # The default (exact PCA, direct solver, mean added back) is close to HEST, not identical.
    default, _, _ = evaluate_fold(X, log1p_counts(counts), counts, np.arange(g), fold,
                                  STConfig(genes=cfg.genes, seed=1))
    assert default["pcc"] == pytest.approx(mean, abs=0.02) and default["pcc"] != mean


def test_hest_exact_fold_with_a_constant_gene_is_nan_as_hest():
    rng = np.random.default_rng(11)
    spots = _spots(n_per=120)
    X = rng.normal(size=(len(spots), 20)).astype(np.float32)
    counts = np.expm1(np.clip(X[:, :2] + 2, 0, None))
    counts[spots["study"].to_numpy() == "A", 1] = 0.0
    cfg = STConfig(split="loso", genes=["a", "b"], hest_exact=True, n_components=8)
    res, _ = evaluate_st({"m": X}, counts, ["a", "b"], spots, cfg)
    r = res["models"]["m"]["loso"]
    assert np.isnan(r["pcc"]["folds"][0]) and np.isfinite(r["pcc"]["folds"][1])
    assert np.isnan(r["genes"]["b"]) and r["nan_genes_per_fold"][0] == ["b"]
