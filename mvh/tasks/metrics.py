"""Metrics shared by the tasks: gene-expression regression and tile classification.

Survival and retrieval metrics live beside their tasks (`survival/`, `retrieval.py`); JSON conversion of
results is `mvh.jobs.jsonable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def pearson_per_gene(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson r of each column over all rows (pooled test spots) -> [G]; NaN where a column is constant."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"shapes differ or are not 2-D: {y_true.shape} vs {y_pred.shape}")
    a = y_true - y_true.mean(axis=0)
    b = y_pred - y_pred.mean(axis=0)
    na = np.sqrt((a * a).sum(axis=0))
    nb = np.sqrt((b * b).sum(axis=0))
    denom = na * nb
    # A column whose spread is at rounding level is constant: its correlation is undefined.
    tiny = (na <= 1e-12 * (1 + np.abs(y_true).max(axis=0) * np.sqrt(len(a)))) | (
        nb <= 1e-12 * (1 + np.abs(y_pred).max(axis=0) * np.sqrt(len(b)))
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=0) / denom
    r[tiny] = np.nan
    return np.clip(r, -1.0, 1.0)


def top_k_mean(values: np.ndarray, k: int = 10) -> float:
    """Mean of the k largest finite values (all of them when fewer); NaN when none is finite."""
    finite = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])[::-1]
    return float(finite[:k].mean()) if len(finite) else float("nan")


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, top: int = 10) -> dict[str, Any]:
    """PCC (mean of per-gene r, constant genes excluded and counted), PCC-top, MAE, MSE, per-gene r."""
    r = pearson_per_gene(y_true, y_pred)
    err = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    finite = np.isfinite(r)
    return {
        "pcc": float(r[finite].mean()) if finite.any() else float("nan"),
        "pcc10": top_k_mean(r, top),
        "mae": float(np.abs(err).mean()),
        "mse": float((err * err).mean()),
        "per_gene": r,
        "n_nan_genes": int((~finite).sum()),
    }


@dataclass
class MetricSummary:
    """A metric over folds: mean, population std (numpy's default, ddof = 0) and the per-fold values."""

    mean: float
    std: float
    folds: list[float]


def summarize(values: Sequence[float], *, propagate_nan: bool = False) -> dict[str, Any]:
    """{"mean", "std", "folds"} over folds: population std (ddof = 0), NaN folds kept in "folds".

    NaN folds are left out of mean and std, or with `propagate_nan` make them NaN (HEST's
    `merge_fold_results`: `np.mean` / `np.std` of the fold values).
    """
    arr = np.asarray(values, dtype=np.float64)
    used = arr if propagate_nan else arr[np.isfinite(arr)]
    return {
        "mean": float(used.mean()) if len(used) else float("nan"),
        "std": float(used.std()) if len(used) else float("nan"),
        "folds": [float(v) for v in arr],
    }


def metric_summary(values: Sequence[float], *, propagate_nan: bool = False) -> MetricSummary:
    """`summarize` as a typed `MetricSummary`."""
    return MetricSummary(**summarize(values, propagate_nan=propagate_nan))


def ovo_auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-one AUROC (Hand & Till) over the classes present in `y_true`; `proba` is [N, C].

    With every class present this is `roc_auc_score(y, proba, multi_class="ovo", average="macro")`, the
    call of UNI's evaluation code (`uni/downstream/eval_patch_features/metrics.py`, `get_eval_metrics`, with
    `roc_kwargs` from `linear_probe.py`); sklearn refuses a test set that lacks a class, so each pair of
    present classes a, b is scored as sklearn does: the mean of AUC(a vs b by p_a) and AUC(b vs a by p_b).
    """
    from itertools import combinations

    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    present = np.unique(y_true)
    pairs = []
    for a, b in combinations(present.tolist(), 2):
        keep = (y_true == a) | (y_true == b)
        pairs.append((roc_auc_score(y_true[keep] == a, proba[keep, a])
                      + roc_auc_score(y_true[keep] == b, proba[keep, b])) / 2)
    return float(np.mean(pairs)) if pairs else float("nan")


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, n_classes: int
) -> dict[str, Any]:
    """Balanced accuracy, weighted F1, AUROC as UNI computes it (NaN if undefined), confusion matrix.

    Labels are integer class indices in [0, n_classes); `proba` is [N, n_classes] (rows sum to 1). AUROC is
    binary on p(class 1) for two classes, else macro one-vs-one (`ovo_auroc`), as UNI's linear probe.
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = np.arange(n_classes)
    auroc = float("nan")
    if proba is not None and len(np.unique(y_true)) >= 2:
        proba = np.asarray(proba, dtype=np.float64)
        auroc = (float(roc_auc_score(y_true, proba[:, 1])) if n_classes == 2
                 else ovo_auroc(y_true, proba))
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "auroc": auroc,
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
