"""Classification from embeddings: planted classes recovered, metrics equal sklearn, folds grouped."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mvh.errors import DataError
from mvh.tasks.classify import (
    ClassifyConfig,
    classify_table_rows,
    evaluate_classification,
    fit_predict_knn,
    fit_predict_probe,
    uni_c,
    write_confusion_figures,
)


def _planted(n_per=40, n_classes=3, dim=32, sep=2.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * sep
    y = np.repeat(np.arange(n_classes), n_per)
    X = (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    groups = np.array([f"slide{i % 8}" for i in range(len(y))])
    return X, np.array([f"class{c}" for c in y]), groups


def test_probe_is_sklearn_logistic_regression_with_uni_c():
    X, labels, _ = _planted()
    y = np.unique(labels, return_inverse=True)[1]
    pred, proba = fit_predict_probe(X[::2], y[::2], X[1::2], 3)
    sc = StandardScaler().fit(X[::2])
    ref = LogisticRegression(C=uni_c(32, 3), max_iter=1000).fit(sc.transform(X[::2]), y[::2])
    np.testing.assert_allclose(proba, ref.predict_proba(sc.transform(X[1::2])), atol=1e-6)
    assert uni_c(768, 9) == pytest.approx(69.12)


def test_knn_votes_by_cosine_on_centred_embeddings():
    Xtr = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], dtype=np.float32) + 5.0
    ytr = np.array([0, 0, 1, 1])
    Xte = np.array([[1.0, 0.05], [0.05, 1.0]], dtype=np.float32) + 5.0
    pred, proba = fit_predict_knn(Xtr, ytr, Xte, 2, k=2)
    # Without centring every point is ~(5, 5) in direction; centred, the classes separate.
    assert pred.tolist() == [0, 1]
    np.testing.assert_allclose(proba, [[1, 0], [0, 1]])


@pytest.mark.parametrize("method", ["probe", "knn"])
def test_planted_classes_are_recovered_with_grouped_folds(method):
    X, labels, groups = _planted()
    res = evaluate_classification({"m": X}, labels, ClassifyConfig(methods=(method,), folds=4), groups=groups)
    r = res["models"]["m"][method]
    assert r["balanced_accuracy"]["mean"] > 0.95
    assert r["auroc"]["mean"] > 0.98
    assert np.sum(r["confusion"]) == len(labels)
    assert res["classes"] == ["class0", "class1", "class2"]
    assert res["settings"]["split"] == "grouped-kfold"


def test_random_embeddings_are_at_chance():
    X, labels, groups = _planted(sep=0.0, seed=1)
    res = evaluate_classification({"m": X}, labels, ClassifyConfig(folds=4), groups=groups)
    for method in ("probe", "knn"):
        assert res["models"]["m"][method]["balanced_accuracy"]["mean"] < 0.55


def test_given_split_and_outputs(tmp_path):
    X, labels, _ = _planted(n_per=20, n_classes=2)
    split = np.where(np.arange(len(labels)) % 3 == 0, "test", "train")
    res = evaluate_classification({"a": X, "b": X * 2}, labels, ClassifyConfig(), split=split)
    assert res["settings"]["split"] == "given"
    assert len(res["models"]["a"]["probe"]["balanced_accuracy"]["folds"]) == 1
    assert len(classify_table_rows(res)) == 4
    paths = write_confusion_figures(res, tmp_path)
    assert len(paths) == 4 and all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(DataError, match="'train' and 'test'"):
        bad = np.where(split == "test", "val", split)
        evaluate_classification({"a": X}, labels, ClassifyConfig(), split=bad)
