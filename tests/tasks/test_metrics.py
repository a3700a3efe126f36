"""Metrics equal scipy/sklearn on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
)

from mvh.tasks.metrics import (
    classification_metrics,
    pearson_per_gene,
    regression_metrics,
    summarize,
    top_k_mean,
)


@pytest.fixture
def pred():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(200, 12))
    p = 0.6 * y + rng.normal(size=y.shape)
    y[:, 3] = 2.5  # a gene constant in this test fold
    return y, p


def test_pearson_matches_scipy_and_constant_gene_is_nan(pred):
    y, p = pred
    r = pearson_per_gene(y, p)
    for g in range(y.shape[1]):
        if g == 3:
            assert np.isnan(r[g])
        else:
            assert r[g] == pytest.approx(pearsonr(y[:, g], p[:, g]).statistic, abs=1e-10)


def test_regression_metrics_match_sklearn(pred):
    y, p = pred
    m = regression_metrics(y, p)
    ref = np.array([pearsonr(y[:, g], p[:, g]).statistic for g in range(12) if g != 3])
    assert m["pcc"] == pytest.approx(ref.mean(), abs=1e-10)
    assert m["pcc10"] == pytest.approx(np.sort(ref)[::-1][:10].mean(), abs=1e-10)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-12)
    assert m["mse"] == pytest.approx(mean_squared_error(y, p), rel=1e-12)
    assert m["n_nan_genes"] == 1


def test_top_k_and_summary():
    assert top_k_mean(np.array([0.1, np.nan, 0.9, 0.5]), 2) == pytest.approx(0.7)
    assert np.isnan(top_k_mean(np.array([np.nan])))
    s = summarize([0.2, 0.4, np.nan])
    assert s["mean"] == pytest.approx(0.3) and s["std"] == pytest.approx(0.1)
    assert np.isnan(s["folds"][2])


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classification_metrics_match_sklearn(n_classes):
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 150)
    logits = rng.normal(size=(150, n_classes)) + 1.5 * np.eye(n_classes)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = proba.argmax(1)
    m = classification_metrics(y, pred, proba, n_classes)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    # UNI's call (uni/downstream/eval_patch_features/linear_probe.py + metrics.py get_eval_metrics):
    # binary on p(class 1), else roc_auc_score(..., multi_class="ovo", average="macro").
    ref_auc = roc_auc_score(y, proba[:, 1]) if n_classes == 2 else roc_auc_score(
        y, proba, multi_class="ovo", average="macro")
    assert m["auroc"] == pytest.approx(ref_auc, abs=1e-12)
    assert m["confusion"] == confusion_matrix(y, pred).tolist()


def test_auroc_is_one_vs_one_not_one_vs_rest():
    """Probabilities where OvO and OvR disagree: mvh reports UNI's OvO."""
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(3), [80, 30, 10])
    logits = rng.normal(size=(120, 3)) + np.array([[2.0, 0, 0], [0, 0.3, 0], [0, 0, 1.0]])[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ovo = roc_auc_score(y, proba, multi_class="ovo", average="macro")
    ovr = roc_auc_score(y, proba, multi_class="ovr", average="macro")
    assert abs(ovo - ovr) > 1e-4
    assert classification_metrics(y, proba.argmax(1), proba, 3)["auroc"] == pytest.approx(ovo, abs=1e-12)


def test_auroc_with_a_class_missing_from_the_test_fold():
    """Hand & Till's pairwise mean over the present classes, each pair written out with binary AUCs."""
    rng = np.random.default_rng(3)
    y = np.array([0] * 50 + [2] * 25 + [3] * 15)
    proba = rng.dirichlet(np.ones(4), size=90)
    proba[y == 0, 0] += 0.5
    proba /= proba.sum(1, keepdims=True)
    pairs = []
    for a, b in [(0, 2), (0, 3), (2, 3)]:
        keep = (y == a) | (y == b)
        pairs.append((roc_auc_score(y[keep] == a, proba[keep, a])
                      + roc_auc_score(y[keep] == b, proba[keep, b])) / 2)
    assert classification_metrics(y, proba.argmax(1), proba, 4)["auroc"] == pytest.approx(np.mean(pairs))
