"""Exact cosine search in numpy: the reference every approximate index and every evaluation uses.

Embeddings go through the package's one L2 normalisation (`mvh.core.vectors.l2_normalise`), so a score
means the same cosine everywhere.
"""

from __future__ import annotations

import numpy as np

from mvh.core.vectors import l2_normalise
from mvh.errors import UsageError

# Similarity entries per block of exact search: 128 MB of float32 similarities, their negation and
# argpartition's int64 positions make ~640 MB a block (~770 MB in float64, as the kNN classifier calls it).
_EXACT_BLOCK = 1 << 25


def exact_search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray | None = None,
    *,
    exclude_rows: np.ndarray | None = None,
    query_groups: np.ndarray | None = None,
    database_groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine top-k: scores [Q, k] float32 and database row ids [Q, k] (-1 past the end).

    `database` [N, D] and `queries` [Q, D] are normalised here. Candidates can be restricted three ways:
    `allowed` [N] bool (the same rows for every query); `exclude_rows` [Q] int (query i never retrieves
    database row `exclude_rows[i]`, -1 = none: a query that is itself a database row); and
    `query_groups` [Q] / `database_groups` [N] int codes (query i never retrieves a row of its own group:
    leave-one-slide-out, leave-one-patient-out). Ties are broken by the lower row id.
    """
    if k < 1:
        raise UsageError(f"-k must be at least 1, got {k}")
    db = l2_normalise(database)
    qs = l2_normalise(queries)
    if db.shape[1] != qs.shape[1]:
        raise UsageError(f"queries have dim {qs.shape[1]} but the database holds dim {db.shape[1]}")
    n = db.shape[0]
    if allowed is None:
        candidates = np.arange(n)
        sub = db
    else:
        candidates = np.flatnonzero(np.asarray(allowed, dtype=bool))
        sub = db[candidates]
    sub_groups = None if database_groups is None else np.asarray(database_groups)[candidates]
    kk = min(k, candidates.size)
    scores = np.full((qs.shape[0], k), -np.inf, dtype=np.float32)
    ids = np.full((qs.shape[0], k), -1, dtype=np.int64)
    if kk == 0:
        return scores, ids
    chunk = max(1, _EXACT_BLOCK // max(sub.shape[0], 1))
    for start in range(0, qs.shape[0], chunk):
        stop = min(qs.shape[0], start + chunk)
        sims = qs[start:stop] @ sub.T
        if sub_groups is not None and query_groups is not None:
            sims[np.asarray(query_groups)[start:stop, None] == sub_groups[None, :]] = -np.inf
        if exclude_rows is not None:
            _mask_rows(sims, np.asarray(exclude_rows, dtype=np.int64)[start:stop], candidates)
        if kk < sub.shape[0]:
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(sub.shape[0]), (stop - start, sub.shape[0]))
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        top = np.take_along_axis(part, order, axis=1)
        top_scores = np.take_along_axis(sims, top, axis=1)
        found = np.isfinite(top_scores)
        scores[start:stop, :kk] = np.where(found, top_scores, -np.inf)
        ids[start:stop, :kk] = np.where(found, candidates[top], -1)
    return scores, ids


def _mask_rows(sims: np.ndarray, rows: np.ndarray, candidates: np.ndarray) -> None:
    """Set sims[i, position of database row rows[i]] to -inf (rows[i] = -1 or not a candidate: no-op)."""
    pos = np.minimum(np.searchsorted(candidates, rows), candidates.size - 1)
    hit = (rows >= 0) & (candidates[pos] == rows)
    sims[np.flatnonzero(hit), pos[hit]] = -np.inf


def recall_at_k(
    approx_ids: np.ndarray,
    exact_ids: np.ndarray,
    k: int,
    *,
    approx_scores: np.ndarray | None = None,
    exact_scores: np.ndarray | None = None,
    tie_tol: float = 1e-6,
) -> float:
    """Mean over queries of the approximate top-k's hits / |exact top-k| (ids [Q, >=k]; -1 = no row).

    A hit is a row of the exact top-k or, given `approx_scores` (the exact score of each approximate
    neighbour) and `exact_scores` (of the exact top-k), a row whose exact score ties the exact k-th score
    within `tie_tol`: which of equal-score rows exact search keeps is arbitrary, so the other is no miss.
    The denominator is k unless fewer than k rows qualified for a query; queries with none are skipped.
    """
    scored = approx_scores is not None and exact_scores is not None
    found = []
    for q, (a, e) in enumerate(zip(np.asarray(approx_ids)[:, :k], np.asarray(exact_ids)[:, :k], strict=True)):
        truth = set(e.tolist()) - {-1}
        if not truth:
            continue
        hits = {int(i) for i in a.tolist() if i in truth}
        if scored:
            kth = np.asarray(exact_scores)[q, len(truth) - 1]
            ties = np.asarray(approx_scores)[q, :k] >= kth - tie_tol
            hits |= {int(i) for i, tie in zip(a.tolist(), ties, strict=True) if tie and i >= 0}
        found.append(min(len(hits), len(truth)) / len(truth))
    return float(np.mean(found)) if found else float("nan")
