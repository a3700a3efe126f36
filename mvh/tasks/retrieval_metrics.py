"""Retrieval metrics (protocols.md section 3): Acc@k, MV@k, Patho-Bench's mAP@k and its / min(k, R) variant.

Metric definitions (Patho-Bench / UNI), for a query of label y, its ranked retrieved labels r_1..r_K and
R = the number of database tiles of label y it may retrieve (itself and left-out tiles excluded):

- Acc@k: 1 if y is among r_1..r_k, else 0; mean over queries.
- MV@k (k = 5): 1 if y is among the most frequent labels of r_1..r_k, ties counted as hits (a 2-2-1 vote
  is a hit for both labels with 2 votes, as Patho-Bench counts it); mean over queries.
- mAP@k (k = 5), Patho-Bench's `RetrievalMixin.map_at_k`: AP@k = sum_{i<=k} P@i * rel_i / k, with
  rel_i = [r_i == y] and P@i = (1/i) sum_{j<=i} rel_j; mAP@k is the mean of AP@k over ALL queries (a query
  with no relevant hit in its top k, including one whose label has no other tile in its database, scores
  0 and stays in the mean). Two hits at ranks 1 and 2 score (1 + 1) / 5 = 0.4.
- mAP@5 / min(5, R) (the named variant `map@5_min_r`): the same sum divided by min(k, R), averaged over the
  queries with R > 0 only; one hit at rank 1 of one possible scores 1.0.

Missing ranks (fewer than k candidates) count as wrong labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_KS = (1, 3, 5)


def acc_at_k(query_labels: Sequence[Any], retrieved: np.ndarray, k: int) -> float:
    """Fraction of queries whose label is among their top-k retrieved labels ([Q, >=k] array)."""
    y = np.asarray(query_labels, dtype=object)[:, None]
    if not len(y):
        return float("nan")
    return float(np.mean((np.asarray(retrieved, dtype=object)[:, :k] == y).any(axis=1)))


def majority_labels(labels: Sequence[Any]) -> set[Any]:
    """The most frequent labels (all of them when tied); None entries never count."""
    counts: dict[Any, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return set()
    best = max(counts.values())
    return {label for label, n in counts.items() if n == best}


def mv_at_k(query_labels: Sequence[Any], retrieved: np.ndarray, k: int = 5) -> float:
    """Fraction of queries whose label is among the majority labels of their top k (ties are hits)."""
    if not len(query_labels):
        return float("nan")
    hits = [y in majority_labels(list(row[:k])) for y, row in zip(query_labels, retrieved, strict=True)]
    return float(np.mean(hits))


def _precision_sum(query_label: Any, retrieved: Sequence[Any], k: int) -> float:
    """sum_{i<=k} P@i * rel_i of one ranked list (missing ranks are misses)."""
    rel = np.array([label == query_label for label in list(retrieved)[:k]], dtype=np.float64)
    precision = np.cumsum(rel) / np.arange(1, rel.size + 1)
    return float((precision * rel).sum())


def average_precision_at_k(query_label: Any, retrieved: Sequence[Any], k: int = 5) -> float:
    """Patho-Bench's AP@k = sum_{i<=k} P@i * rel_i / k of one ranked list (0 without a hit)."""
    return _precision_sum(query_label, retrieved, k) / k


def map_at_k(query_labels: Sequence[Any], retrieved: np.ndarray, k: int = 5) -> float:
    """Patho-Bench's mAP@k: mean of `average_precision_at_k` over every query (NaN without queries)."""
    aps = [average_precision_at_k(y, row, k) for y, row in zip(query_labels, retrieved, strict=True)]
    return float(np.mean(aps)) if aps else float("nan")


def average_precision_at_k_min_r(
    query_label: Any, retrieved: Sequence[Any], n_relevant: int, k: int = 5
) -> float:
    """Named variant: sum_{i<=k} P@i * rel_i / min(k, R) (NaN when R = `n_relevant` is 0)."""
    if n_relevant <= 0:
        return float("nan")
    return _precision_sum(query_label, retrieved, k) / min(k, n_relevant)


def map_at_k_min_r(
    query_labels: Sequence[Any], retrieved: np.ndarray, n_relevant: Sequence[int], k: int = 5
) -> float:
    """Named variant: mean of `average_precision_at_k_min_r` over the queries with R > 0 (NaN if none)."""
    aps = [average_precision_at_k_min_r(y, row, int(r), k)
           for y, row, r in zip(query_labels, retrieved, n_relevant, strict=True)]
    finite = [a for a in aps if a == a]
    return float(np.mean(finite)) if finite else float("nan")


def retrieval_metrics(
    query_labels: Sequence[Any], retrieved: np.ndarray, n_relevant: Sequence[int],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Acc@k for each k in `ks`, MV@5, mAP@5 (Patho-Bench) and its / min(5, R) variant, of ranked
    retrieved labels [Q, K]."""
    out = {f"acc@{k}": acc_at_k(query_labels, retrieved, k) for k in ks}
    out["mv@5"] = mv_at_k(query_labels, retrieved, 5)
    out["map@5"] = map_at_k(query_labels, retrieved, 5)
    out["map@5_min_r"] = map_at_k_min_r(query_labels, retrieved, n_relevant, 5)
    return out


def relevant_counts(labels: Sequence[Any], groups: Sequence[Any] | None) -> np.ndarray:
    """R per query: database rows of its label, minus itself and (with `groups`) the rows of its group."""
    labels = pd.Series(np.asarray(labels, dtype=object))
    same_label = labels.map(labels.value_counts()).to_numpy(np.int64)
    if groups is None:
        return same_label - 1
    frame = pd.DataFrame({"label": labels, "group": np.asarray(groups, dtype=object)})
    same_group = frame.groupby(["label", "group"])["label"].transform("size").to_numpy(np.int64)
    return same_label - same_group
