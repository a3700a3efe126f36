"""Patch retrieval evaluation (protocols.md section 3): Acc@k, MV@5, mAP@5, recall of approximate search.

Every labelled tile is a query, and the database is the labelled tiles of the store. A query never
retrieves itself; with leave-one-slide-out (the default, since query and database come from one store)
it never retrieves any tile of its own slide. Exact cosine search is the reference; when the store has
a FAISS index, the same metrics are computed with it, plus its recall@k against the exact neighbours.

Metric definitions, for a query of label y and its ranked retrieved labels r_1..r_K:

- Acc@k: 1 if y is among r_1..r_k, else 0; averaged over queries.
- MV@k (k = 5): 1 if the majority label of r_1..r_k is y; a tie between labels is won by the label
  that appears first in the ranking; averaged over queries.
- mAP@k (k = 5): AP@k = sum_{i<=k} P@i * rel_i / sum_{i<=k} rel_i, with rel_i = [r_i == y] and
  P@i = (1/i) sum_{j<=i} rel_j; AP@k = 0 when no relevant tile is in the top k. mAP@k is the mean of
  AP@k over queries. (Normalising by the relevant tiles retrieved, not by min(k, all relevant tiles),
  so that a database with thousands of tiles per label does not cap the score.)

Missing ranks (fewer than k candidates) count as wrong labels.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvh.errors import DataError
from mvh.index.store import EmbeddingStore
from mvh.index.vector import (
    VectorIndex,
    index_info,
    l2_normalise,
    load_index,
    recall_at_k,
)

DEFAULT_KS = (1, 3, 5)
_BLOCK = 1 << 26  # similarity entries per block: 256 MB of float32


# ---------------------------------------------------------------------------- metrics
def acc_at_k(query_labels: Sequence[Any], retrieved: np.ndarray, k: int) -> float:
    """Fraction of queries whose label is among their top-k retrieved labels ([Q, >=k] array)."""
    y = np.asarray(query_labels, dtype=object)[:, None]
    if not len(y):
        return float("nan")
    return float(np.mean((np.asarray(retrieved, dtype=object)[:, :k] == y).any(axis=1)))


def majority_label(labels: Sequence[Any]) -> Any:
    """The most frequent label; ties go to the label ranked first. None entries never win."""
    counts: dict[Any, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(label for label in labels if label is not None and counts[label] == best)


def mv_at_k(query_labels: Sequence[Any], retrieved: np.ndarray, k: int = 5) -> float:
    """Fraction of queries whose label is the majority vote of their top-k retrieved labels."""
    if not len(query_labels):
        return float("nan")
    hits = [majority_label(list(row[:k])) == y for y, row in zip(query_labels, retrieved, strict=True)]
    return float(np.mean(hits))


def average_precision_at_k(query_label: Any, retrieved: Sequence[Any], k: int = 5) -> float:
    """AP@k of one ranked list: mean of P@i over the relevant ranks i <= k (0 when none is relevant)."""
    rel = np.array([label == query_label for label in list(retrieved)[:k]], dtype=np.float64)
    if rel.sum() == 0:
        return 0.0
    precision = np.cumsum(rel) / np.arange(1, rel.size + 1)
    return float((precision * rel).sum() / rel.sum())


def map_at_k(query_labels: Sequence[Any], retrieved: np.ndarray, k: int = 5) -> float:
    """Mean over queries of AP@k (see the module docstring)."""
    if not len(query_labels):
        return float("nan")
    pairs = zip(query_labels, retrieved, strict=True)
    return float(np.mean([average_precision_at_k(y, row, k) for y, row in pairs]))


def retrieval_metrics(
    query_labels: Sequence[Any], retrieved: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Acc@k for each k in `ks`, MV@5 and mAP@5 of ranked retrieved labels [Q, K]."""
    out = {f"acc@{k}": acc_at_k(query_labels, retrieved, k) for k in ks}
    out["mv@5"] = mv_at_k(query_labels, retrieved, 5)
    out["map@5"] = map_at_k(query_labels, retrieved, 5)
    return out


# ---------------------------------------------------------------------------- labels
def load_labels(path: Path) -> pd.DataFrame:
    """Read a labels CSV with columns (tile_id, label) or (slide_id, label) (DataError otherwise)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read labels {path}: {exc}") from exc
    return _check_labels(frame, str(path))


def _check_labels(labels: pd.DataFrame, name: str) -> pd.DataFrame:
    keys = [c for c in ("tile_id", "slide_id") if c in labels.columns]
    if "label" not in labels.columns or not keys:
        raise DataError(
            f"labels {name} need a `label` column and a `tile_id` or `slide_id` column, "
            f"got {list(labels.columns)}"
        )
    key = keys[0]
    frame = labels[[key, "label"]].astype(str)
    frame = frame[frame["label"].str.len() > 0]
    duplicated = frame[key].duplicated(keep=False)
    if duplicated.any():
        raise DataError(f"labels {name}: {key} {frame[key][duplicated].iloc[0]!r} has several rows; keep one")
    return frame.reset_index(drop=True)


def _labelled_tiles(store: EmbeddingStore, labels: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows and embeddings of the store's labelled tiles, with a `label` column."""
    labels = _check_labels(labels, "table")
    key = "tile_id" if "tile_id" in labels.columns else "slide_id"
    rows, emb = store.all_embeddings()
    known = set(rows[key])
    unknown = [v for v in labels[key] if v not in known]
    if unknown:
        raise DataError(
            f"{len(unknown)} labelled {key}s are not in store {store.uri} (e.g. {unknown[:3]}): "
            "check the labels file against `mvh info`"
        )
    mapping = dict(zip(labels[key], labels["label"], strict=True))
    label = rows[key].map(mapping)
    keep = label.notna().to_numpy()
    rows = rows[keep].reset_index(drop=True)
    rows["label"] = label[keep].to_numpy()
    return rows, emb[keep]


# ---------------------------------------------------------------------------- neighbours
def exact_neighbours(
    embeddings: np.ndarray, slide_ids: Sequence[str], k: int, leave_one_slide_out: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of every row against all others: scores [N, k], ids [N, k] (-1 past the end).

    A row never retrieves itself and, with `leave_one_slide_out`, no row of its own slide.
    """
    x = l2_normalise(embeddings)
    _, slide_code = np.unique(np.asarray(slide_ids, dtype=object).astype(str), return_inverse=True)
    n = x.shape[0]
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    ids = np.full((n, k), -1, dtype=np.int64)
    chunk = max(1, _BLOCK // max(n, 1))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sims = x[start:stop] @ x.T
        if leave_one_slide_out:
            sims[slide_code[start:stop, None] == slide_code[None, :]] = -np.inf
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        kk = min(k, n)
        if kk < n:
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        else:
            part = np.tile(np.arange(n), (stop - start, 1))
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)[:, :k]
        top = np.take_along_axis(part, order, axis=1)
        top_scores = np.take_along_axis(sims, top, axis=1)
        valid = np.isfinite(top_scores)
        scores[start:stop, : top.shape[1]] = np.where(valid, top_scores, -np.inf)
        ids[start:stop, : top.shape[1]] = np.where(valid, top, -1)
    return scores, ids


def index_neighbours(
    index: VectorIndex, rows: pd.DataFrame, embeddings: np.ndarray, k: int, leave_one_slide_out: bool = True
) -> np.ndarray:
    """Top-k of every labelled row through the FAISS index, as positions into `rows` [N, k] (-1 = none).

    The candidates are restricted to the labelled rows (and to other slides with leave-one-slide-out) by
    an ID selector, one search per query slide; the query itself is dropped.
    """
    position = pd.Series(np.arange(len(rows)), index=rows["tile_id"].to_numpy())
    index_pos = pd.Series(np.arange(index.n), index=index.rows["tile_id"].to_numpy())
    labelled = np.zeros(index.n, dtype=bool)
    labelled[index_pos.reindex(rows["tile_id"]).to_numpy()] = True
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for slide_id, group in rows.groupby("slide_id", sort=True):
        allowed = labelled.copy()
        if leave_one_slide_out:
            allowed &= index.rows["slide_id"].to_numpy() != slide_id
        extra = 0 if leave_one_slide_out else 1
        _, ids = index.search_ids(embeddings[group.index.to_numpy()], k + extra, allowed=allowed)
        tile_ids = np.where(ids >= 0, index.rows["tile_id"].to_numpy()[np.maximum(ids, 0)], None)
        for row_i, found in zip(group.index.to_numpy(), tile_ids, strict=True):
            hits = [position[t] for t in found if t is not None and position[t] != row_i][:k]
            out[row_i, : len(hits)] = hits
    return out


def _labels_of(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = np.where(ids >= 0, labels[np.maximum(ids, 0)], None)
    return out.astype(object)


# ---------------------------------------------------------------------------- evaluation
def evaluate_retrieval(
    store: EmbeddingStore,
    labels_df: pd.DataFrame,
    ks: Sequence[int] = DEFAULT_KS,
    leave_one_slide_out: bool = True,
    index: VectorIndex | None = None,
) -> dict[str, Any]:
    """Retrieval metrics of the labelled tiles (exact reference, and the store's index when present)."""
    start = time.perf_counter()
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise DataError(f"--k values must be positive integers, got {list(ks)}")
    rows, emb = _labelled_tiles(store, labels_df)
    if len(rows) < 2:
        raise DataError(f"only {len(rows)} labelled tile(s) in store {store.uri}: label more tiles or slides")
    depth = max(*ks, 5)
    labels = rows["label"].to_numpy(dtype=object)
    _, exact_ids = exact_neighbours(emb, rows["slide_id"].to_numpy(), depth, leave_one_slide_out)
    result: dict[str, Any] = {
        "store": store.uri,
        "n_queries": int(len(rows)),
        "n_database": int(len(rows)),
        "n_slides": int(rows["slide_id"].nunique()),
        "labels": {str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()},
        "leave_one_slide_out": bool(leave_one_slide_out),
        "ks": ks,
        "exact": retrieval_metrics(labels, _labels_of(exact_ids, labels), ks),
        "index": None,
        "notes": [],
    }
    if index is None:
        info = index_info(store)
        if not info["exists"]:
            result["notes"].append("no FAISS index: exact search only (build one with `mvh index build`)")
        elif info["stale"]:
            result["notes"].append(f"FAISS index skipped: it is stale ({info['stale_reason']})")
        else:
            index = load_index(store)
    if index is not None:
        approx_ids = index_neighbours(index, rows, emb, depth, leave_one_slide_out)
        metrics = retrieval_metrics(labels, _labels_of(approx_ids, labels), ks)
        metrics.update({f"recall@{k}": recall_at_k(approx_ids, exact_ids, k) for k in ks})
        metrics["kind"] = index.params.kind
        metrics["description"] = index.params.describe()
        result["index"] = metrics
    result["seconds"] = time.perf_counter() - start
    return result


def run_retrieval_eval(
    store_uri: str | Path,
    labels_path: Path,
    ks: Sequence[int] = DEFAULT_KS,
    leave_one_slide_out: bool = True,
    out: Path | None = None,
) -> dict[str, Any]:
    """`mvh eval retrieval`: open the store, read the labels CSV, evaluate, write JSON to `out` if given."""
    result = evaluate_retrieval(
        EmbeddingStore.open(store_uri), load_labels(Path(labels_path)), ks, leave_one_slide_out
    )
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            out.write_text(json.dumps(result, indent=2, default=str))
        except OSError as exc:
            raise DataError(f"cannot write {out}: {exc}") from exc
        result["out"] = str(out)
    return result
