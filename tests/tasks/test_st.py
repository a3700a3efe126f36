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
from mvh.tasks.st_eval import STEvaluation, STProtocol, robustness_drop, table_rows
from mvh.tasks.st_eval import evaluate_st as _evaluate_st
from mvh.tasks.st_model import gene_variances, log1p_counts, make_regressor, select_hvg
from mvh.tasks.stores import StoreSpec


def _exact(**kw) -> STProtocol:
    """The exact-solve alternative (mvh's former default), which these array-level tests exercise."""
    return STProtocol(regressor="ridge-exact", **kw)


def _as_dict(evaluation: STEvaluation) -> dict:
    """The evaluation as nested dicts (results.json's layout before typing, NaN kept) for older asserts."""
    from dataclasses import asdict

    models = {m: {**{s: asdict(v) for s, v in r.splits.items()}, "drop": r.drop}
              for m, r in evaluation.models.items()}
    return {"settings": asdict(evaluation.settings), "models": models, "notes": evaluation.notes,
            "typed": evaluation.models}


def evaluate_st(embeddings, counts, genes, spots, protocol, splits=None, **kw):
    """`evaluate_st` with the dict view above; `splits` overrides the protocol's."""
    if splits is not None:
        from dataclasses import replace

        protocol = replace(protocol, splits=tuple(splits))
    evaluation, held = _evaluate_st(embeddings, counts, genes, spots, protocol, **kw)
    return _as_dict(evaluation), held


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
    cfg = _exact(splits=("random",), folds=4, genes=genes, pca=False)
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
    res, _ = evaluate_st({"noise": X}, counts, genes, spots, _exact(splits=("random",), folds=3, genes=genes))
    assert abs(res["models"]["noise"]["random"]["pcc"]["mean"]) < 0.15


def test_ridge_exact_matches_reference_composition():
    rng = np.random.default_rng(2)
    Xtr, Xte = rng.normal(size=(300, 40)), rng.normal(size=(50, 40))
    ytr = rng.normal(size=(300, 7))
    model = make_regressor("ridge-exact", n_components=16).fit(Xtr, ytr)
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
    res, _ = evaluate_st({"m": X}, counts, genes, spots, _exact(splits=("loso",), top_genes=3, seed=0))
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
    cfg = _exact(folds=3, genes=genes)
    models = {"m1": X, "m2": X[:, ::-1].copy()}
    res, held = evaluate_st(models, counts, genes, spots, cfg, splits=["random", "loso"])
    for m in ("m1", "m2"):
        entry = res["models"][m]
        for split in ("random", "loso"):
            assert set(entry[split]) >= {"pcc", "pcc10", "mae", "mse", "genes"}
            assert set(entry[split]["pcc"]) == {"mean", "std", "folds"}
        ratio = entry["loso"]["pcc"]["mean"] / entry["random"]["pcc"]["mean"]
        assert entry["drop"] == pytest.approx(1 - ratio)
    assert res["settings"]["seed"] == 1 and res["settings"]["genes"] == genes
    assert len(table_rows(res["typed"])) == 2
    assert len(held) == 4


def test_drop_and_errors():
    assert robustness_drop(0.5, 0.4) == pytest.approx(0.2)
    assert np.isnan(robustness_drop(0.0, 0.4))
    spots = _spots(n_per=5)
    with pytest.raises(DataError, match="genes not in"):
        evaluate_st({"m": np.zeros((len(spots), 3))}, np.ones((len(spots), 2)), ["a", "b"], spots,
                    _exact(genes=["zz"], folds=2))
    with pytest.raises(DataError, match="embeddings"):
        evaluate_st({"m": np.zeros((3, 3))}, np.ones((len(spots), 2)), ["a", "b"], spots, _exact(folds=2))


def test_gene_constant_in_a_test_fold_is_nan_and_named():
    rng = np.random.default_rng(6)
    spots = _spots(n_per=20)
    X = rng.normal(size=(len(spots), 10)).astype(np.float32)
    counts = np.expm1(np.clip(X[:, :2] + 2, 0, None))
    counts[spots["study"].to_numpy() == "A", 1] = 0.0  # gene "b" is flat in study A
    res, _ = evaluate_st({"m": X}, counts, ["a", "b"], spots, _exact(splits=("loso",), genes=["a", "b"]))
    r = res["models"]["m"]["loso"]
    assert r["nan_genes_per_fold"] == [["b"], [], []] and r["n_nan_genes"] == 1
    assert np.isnan(r["genes_per_fold"][0]["b"]) and np.isfinite(r["genes_per_fold"][1]["b"])
    assert r["pcc"]["folds"][0] == pytest.approx(r["genes_per_fold"][0]["a"])
    assert np.isfinite(r["genes"]["b"])  # averaged over the folds where it is defined
    assert any("b (study=A)" in n for n in res["notes"])  # named in a printed note too
    assert table_rows(res["typed"])[0]["loso"]["n_nan_genes"] == 1


def test_gene_variances_sparse_equals_dense_numpy():
    rng = np.random.default_rng(7)
    counts = rng.poisson(0.7, size=(60, 9)).astype(np.float32)
    rows = np.arange(0, 60, 3)
    ref = np.log1p(counts[rows].astype(np.float64)).var(axis=0)
    np.testing.assert_allclose(gene_variances(log1p_counts(counts), rows), ref, rtol=1e-5)
    np.testing.assert_allclose(gene_variances(log1p_counts(sp.csr_matrix(counts)), rows), ref, rtol=1e-5)


SPEC = StoreSpec(uri="s.lance")


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"split": "spots"}, "--split"),
        ({"compare": ["random", "random"]}, "--compare"),
        ({"folds": 1}, "--folds"),
        ({"top_genes": 0}, "--top-genes"),
        ({"regressor": "svm"}, "--regressor"),
        ({"batch_size": 0}, "--batch-size"),
        ({"workers": -1}, "--workers"),
    ],
)
def test_config_validates_on_construction(kwargs, flag):
    with pytest.raises(UsageError, match=flag):
        STConfig(stores=(SPEC,), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"genes": ["a", "a"]}, "twice"), ({"splits": ("loso", "loso")}, "--compare"), ({"folds": 1}, "--folds"),
     ({"regressor": "svm"}, "--regressor")],
)
def test_protocol_validates_on_construction(kwargs, flag):
    with pytest.raises(UsageError, match=flag):
        STProtocol(**kwargs)


def test_config_is_frozen_and_reads_no_file(tmp_path, monkeypatch):
    """Issue 21: building the config touches no file; `read_inputs` (run_st's first step) checks them."""
    from dataclasses import FrozenInstanceError

    from mvh.tasks.st import read_inputs

    missing_meta = tmp_path / "meta.csv"
    genes = tmp_path / "genes.txt"
    genes.write_text("a\nb\n")
    monkeypatch.chdir(tmp_path)
    cfg = STConfig(inputs=(tmp_path / "nonexistent",), stores=(SPEC,), meta=missing_meta, genes_file=genes)
    with pytest.raises(FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
    with pytest.raises(UsageError, match="nonexistent: no such file"):
        read_inputs(cfg)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    with pytest.raises(UsageError, match="--meta"):
        read_inputs(STConfig(inputs=(cohort,), stores=(SPEC,), meta=missing_meta))
    protocol = read_inputs(STConfig(inputs=(cohort,), stores=(SPEC,), genes_file=genes, seed=5)).protocol
    assert protocol.genes == ("a", "b") and protocol.seed == 5 and protocol.splits == ("patient",)
    with pytest.raises(UsageError, match="hest-bench needs a HEST-Benchmark task"):
        read_inputs(STConfig(inputs=(cohort,), stores=(SPEC,), split="hest-bench"))


def test_config_needs_a_model(tmp_path):
    with pytest.raises(UsageError, match="no model given"):
        STConfig(inputs=(tmp_path,))


def test_default_split_is_patient_kfold_grouped_by_patient():
    assert STConfig(stores=(SPEC,)).splits == ("patient",) and STConfig(stores=(SPEC,)).seed == 1
    assert STProtocol().seed == 1 and STProtocol().regressor == "ridge"  # HEST's defaults
    rng = np.random.default_rng(8)
    spots = _spots(n_per=10, studies=("A", "B", "C", "D"), samples_per_study=2)
    # 8 samples of 7 patients (two samples share a patient): 5 folds by default.
    spots["patient"] = spots["sample_id"].replace({"B1": "B0"})
    X = rng.normal(size=(len(spots), 6)).astype(np.float32)
    counts = rng.poisson(3.0, size=(len(spots), 5))
    res, _ = evaluate_st({"m": X}, counts, list("abcde"), spots, _exact(genes=list("abcde")))
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
                          _exact(genes=list("abcde")))
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
    res, _ = evaluate_st({"m": X}, counts, list("abc"), spots, _exact(splits=("random",), genes=list("abc")))
    assert res["models"]["m"]["random"]["level"].startswith("spot-level")
    assert res["settings"]["levels"]["random"].startswith("spot-level")
    assert "spot-level" in res["settings"]["how_by_split"]["random"]


