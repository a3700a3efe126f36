"""Patch retrieval evaluation (protocols.md section 3): Acc@k, MV@5, mAP@5, recall of approximate search.

Every labelled tile is a query, and the database is the labelled tiles of the store. A query never
retrieves itself; with `leave_out="slide"` (the default, since query and database come from one store)
it never retrieves a tile of its own slide, with `leave_out="patient"` none of its own patient (a
`patient` column in the labels file). Exact cosine search (`mvh.index.exact.exact_search`, the index's
own reference, with its L2 normalisation) gives the reported numbers; when the store has a FAISS index,
the same metrics are computed with it, plus its recall@k against the exact neighbours.

The metrics and their definitions live in `mvh.tasks.retrieval_metrics`; this module holds the labels,
the neighbour searches and the job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvh.errors import DataError, UsageError
from mvh.index.exact import exact_search, l2_normalise, recall_at_k
from mvh.index.faiss_index import VectorIndex
from mvh.index.index_files import index_info, load_index
from mvh.index.row_parts import ROW_COLUMNS
from mvh.jobs import RESULTS_FILE, JobResult, check_out_folder, out_folder
from mvh.progress import Event, Progress, report
from mvh.store import EmbeddingStore
from mvh.tasks.retrieval_metrics import DEFAULT_KS, relevant_counts, retrieval_metrics
from mvh.tasks.stores import read_slides, select_tiles, tile_key

LEAVE_OUT = ("slide", "patient", "none")
QUERIES = "queries"
DEFINITIONS = {
    "acc@k": "1 if the query's label is among its top-k retrieved labels; mean over queries",
    "mv@5": "1 if the query's label is among the most frequent labels of the top 5 (ties count as hits, "
            "Patho-Bench); mean over queries",
    "map@5": "mean over all queries of sum_{i<=5} P@i * rel_i / 5 (0 without a hit; Patho-Bench's "
             "RetrievalMixin.map_at_k)",
    "map@5_min_r": "named variant: mean over queries with R > 0 of sum_{i<=5} P@i * rel_i / min(5, R), "
                   "R = retrievable tiles of the query's label",
    "recall@k": "mean over queries of |index top-k hits| / |exact top-k|; a hit is an exact top-k row or "
                "one whose exact cosine ties the exact k-th cosine (within 1e-6)",
}


# ---------------------------------------------------------------------------- labels
def load_labels(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Read a labels CSV: (tile_id or slide_id), label[, patient] -> (table, notes); DataError otherwise."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read labels {path}: {exc}; give a CSV with tile_id,label") from exc
    return check_labels(frame, str(path))


def check_labels(labels: pd.DataFrame, name: str) -> tuple[pd.DataFrame, list[str]]:
    """Validate a labels table (rows with an empty label are dropped and counted in a note)."""
    keys = [c for c in ("tile_id", "slide_id") if c in labels.columns]
    if "label" not in labels.columns or not keys:
        raise DataError(
            f"labels {name} need a `label` column and a `tile_id` or `slide_id` column, "
            f"got {list(labels.columns)}"
        )
    key = keys[0]
    columns = [key, "label", *(["patient"] if "patient" in labels.columns else [])]
    frame = labels[columns].astype(str)
    empty = frame["label"].str.len() == 0
    notes = []
    if empty.any():
        notes.append(f"labels {name}: {int(empty.sum())} row(s) without a label were left out")
    frame = frame[~empty]
    duplicated = frame[key].duplicated(keep=False)
    if duplicated.any():
        raise DataError(f"labels {name}: {key} {frame[key][duplicated].iloc[0]!r} has several rows; keep one")
    if "patient" in frame.columns and (frame["patient"].str.len() == 0).any():
        raise DataError(f"labels {name}: empty `patient` cells; fill them or drop the column")
    return frame.reset_index(drop=True), notes


def labelled_tiles(
    store: EmbeddingStore, labels: pd.DataFrame, source: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows (with `label`, and `patient` when given) and embeddings of the labelled tiles: one store scan."""
    key = "tile_id" if "tile_id" in labels.columns else "slide_id"
    if key == "tile_id":  # streamed: memory is the labelled tiles (memory-mapped when large)
        rows, emb, found = select_tiles(store, sorted(set(labels["tile_id"].astype(str))), tile_key,
                                        columns=ROW_COLUMNS)
        rows, emb = rows[found].reset_index(drop=True), emb[found]
    else:
        slides = sorted(set(labels["slide_id"].astype(str)) & set(store.slide_ids()))
        rows, emb = read_slides(store, slides, ROW_COLUMNS)
    known = set(rows[key])
    unknown = [v for v in labels[key] if v not in known]
    if unknown:
        raise DataError(
            f"labels file {source}: {len(unknown)} {key}(s) are not done tiles/slides of store {store.uri} "
            f"(e.g. {unknown[:3]}): fix or remove those rows (list the store with `mvh info`)"
        )
    table = labels.set_index(key)
    label = rows[key].map(table["label"])
    keep = label.notna().to_numpy()
    out = rows[keep].reset_index(drop=True)
    out["label"] = label[keep].to_numpy()
    if "patient" in table.columns:
        out["patient"] = rows[key].map(table["patient"])[keep].to_numpy()
    return out, emb[keep]


# ---------------------------------------------------------------------------- neighbours
def group_codes(rows: pd.DataFrame, leave_out: str) -> np.ndarray | None:
    """Integer group per labelled row for `leave_out` (slide or patient), None for "none"."""
    if leave_out == "none":
        return None
    column = "slide_id" if leave_out == "slide" else "patient"
    return np.unique(rows[column].to_numpy().astype(str), return_inverse=True)[1]


def exact_neighbours(embeddings: np.ndarray, k: int, groups: np.ndarray | None) -> np.ndarray:
    """Exact top-k of every row against the others (never itself, never its own group): ids [N, k]."""
    n = len(embeddings)
    _, ids = exact_search(embeddings, embeddings, k, exclude_rows=np.arange(n), query_groups=groups,
                          database_groups=groups)
    return ids


def index_neighbours(
    index: VectorIndex, rows: pd.DataFrame, embeddings: np.ndarray, k: int, groups: np.ndarray | None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Top-k of every labelled row through the FAISS index, as positions into `rows` [N, k] (-1 = none).

    Candidates are restricted to the labelled rows of other groups by an ID selector, one search per
    query group (or one in all without groups); the query itself is dropped.
    """
    in_index = index.tile_rows(rows["tile_id"].tolist())
    if (in_index < 0).any():
        raise DataError(
            f"the index of {index.meta.get('store_uri')} misses labelled tiles: run `mvh index build`"
        )
    position = np.full(index.n, -1, dtype=np.int64)
    position[in_index] = np.arange(len(rows))
    labelled = position >= 0
    row_group = np.full(index.n, -1, dtype=np.int64)
    if groups is not None:
        row_group[in_index] = groups
    out = np.full((len(rows), k), -1, dtype=np.int64)
    if groups is None:
        batches = [np.arange(len(rows))]
    else:
        batches = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    for members in batches:
        allowed = labelled if groups is None else labelled & (row_group != groups[members[0]])
        _, ids = index.search_ids(embeddings[members], k + 1, allowed=allowed)
        found = np.where(ids >= 0, position[np.maximum(ids, 0)], -1)
        for row_i, hits in zip(members, found, strict=True):
            kept = [h for h in hits if h >= 0 and h != row_i][:k]
            out[row_i, : len(kept)] = kept
        report(progress, Event.ADVANCE, QUERIES, len(members))
    return out


_SCORE_ROWS = 4096  # rows per block of neighbour_scores: [rows, k, dim] float64 gathered at a time


def neighbour_scores(embeddings: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact cosine of each row with its neighbours `ids` [N, k] (-1: -inf), one arithmetic for every list.

    The neighbours' vectors are gathered a block of rows at a time, so memory is one block, not N x k
    vectors (6 GB for 100,000 labelled tiles at k = 10)."""
    x = l2_normalise(embeddings).astype(np.float64)
    safe = np.maximum(ids, 0)
    scores = np.empty(ids.shape, dtype=np.float64)
    for start in range(0, len(ids), _SCORE_ROWS):
        block = slice(start, min(start + _SCORE_ROWS, len(ids)))  # row i of ids: row i's neighbours
        scores[block] = np.einsum("nd,nkd->nk", x[block], x[safe[block]])
    return np.where(ids >= 0, scores, -np.inf)


def _labels_of(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.where(ids >= 0, labels[np.maximum(ids, 0)], None).astype(object)


# ---------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class RetrievalConfig:
    """Settings of `mvh eval retrieval` (validated on construction: UsageError naming the flag)."""

    store: str
    labels: Path
    ks: tuple[int, ...] = DEFAULT_KS
    leave_out: str = "slide"
    out: Path | None = None
    use_index: bool = True

    def __post_init__(self) -> None:
        ks = tuple(self.ks)
        if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
            raise UsageError(f"--ks {list(ks)}: give positive integers, e.g. --ks 1,3,5")
        object.__setattr__(self, "ks", tuple(sorted({int(k) for k in ks})))
        if self.leave_out not in LEAVE_OUT:
            raise UsageError(f"--leave-out {self.leave_out!r}: use one of {', '.join(LEAVE_OUT)}")
        object.__setattr__(self, "labels", Path(self.labels))
        if self.out is not None:
            object.__setattr__(self, "out", out_folder(self.out, RESULTS_FILE))


@dataclass
class RetrievalResult(JobResult, job="retrieval"):
    """Retrieval metrics (results.json of `mvh eval retrieval`)."""

    store: str
    labels: str
    store_snapshot: dict[str, Any]
    n_queries: int
    n_database: int
    n_slides: int
    n_patients: int | None
    label_counts: dict[str, int]
    leave_out: str
    ks: list[int]
    exact: dict[str, float]
    index: dict[str, Any] | None
    n_queries_without_relevant: int
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def evaluate_retrieval(
    store: EmbeddingStore,
    labels: pd.DataFrame,
    ks: Sequence[int] = DEFAULT_KS,
    leave_out: str = "slide",
    index: VectorIndex | None = None,
    use_index: bool = True,
    source: str = "table",
    progress: Progress | None = None,
) -> RetrievalResult:
    """Retrieval metrics of the labelled tiles (exact reference, and the store's index when present)."""
    start = time.perf_counter()
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise UsageError(f"--ks values must be positive integers, got {list(ks)}")
    if leave_out not in LEAVE_OUT:
        raise UsageError(f"--leave-out {leave_out!r}: use one of {', '.join(LEAVE_OUT)}")
    labels, notes = check_labels(labels, source)
    if leave_out == "patient" and "patient" not in labels.columns:
        raise DataError(f"labels {source}: --leave-out patient needs a `patient` column")
    rows, emb = labelled_tiles(store, labels, source)
    if len(rows) < 2:
        raise DataError(f"only {len(rows)} labelled tile(s) in store {store.uri}: label more tiles or slides")
    depth = max(*ks, 5)
    label_arr = rows["label"].to_numpy(dtype=object)
    groups = group_codes(rows, leave_out)
    n_relevant = relevant_counts(label_arr, groups)
    without = int((n_relevant <= 0).sum())
    if without:
        notes.append(f"{without} queries have no retrievable tile of their label (leave-out {leave_out}): "
                     "they count as misses in Acc@k, MV@5 and mAP@5 (AP 0) and are left out of map@5_min_r")
    use_index = use_index or index is not None
    report(progress, Event.TOTAL, QUERIES, len(rows) * (2 if use_index else 1))
    report(progress, Event.STATUS, QUERIES, 0, "exact search")
    exact_ids = exact_neighbours(emb, depth, groups)
    report(progress, Event.ADVANCE, QUERIES, len(rows))
    metrics_index = None
    if index is None and use_index:
        info = index_info(store)
        if not info["exists"]:
            notes.append("no FAISS index: exact search only (build one with `mvh index build`)")
        elif info["stale"]:
            notes.append(f"FAISS index skipped: it is stale ({info['stale_reason']})")
        else:
            index = load_index(store)
    if index is not None:
        report(progress, Event.STATUS, QUERIES, 0, f"index {index.params.describe()}")
        approx_ids = index_neighbours(index, rows, emb, depth, groups, progress)
        metrics_index = dict(retrieval_metrics(label_arr, _labels_of(approx_ids, label_arr), n_relevant, ks))
        # Scored recall: an index neighbour that ties the exact k-th cosine is no miss.
        approx_scores, exact_scores = neighbour_scores(emb, approx_ids), neighbour_scores(emb, exact_ids)
        scored = {"approx_scores": approx_scores, "exact_scores": exact_scores}
        metrics_index.update({f"recall@{k}": recall_at_k(approx_ids, exact_ids, k, **scored) for k in ks})
        metrics_index["kind"] = index.params.kind
        metrics_index["description"] = index.params.describe()
    return RetrievalResult(
        store=store.uri,
        labels=source,
        store_snapshot=store.snapshot(),
        n_queries=int(len(rows)),
        n_database=int(len(rows)),
        n_slides=int(rows["slide_id"].nunique()),
        n_patients=int(rows["patient"].nunique()) if "patient" in rows.columns else None,
        label_counts={str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()},
        leave_out=leave_out,
        ks=ks,
        exact=retrieval_metrics(label_arr, _labels_of(exact_ids, label_arr), n_relevant, ks),
        index=metrics_index,
        n_queries_without_relevant=without,
        notes=notes,
        seconds=time.perf_counter() - start,
    )


def run_retrieval(cfg: RetrievalConfig, *, progress: Progress | None = None) -> RetrievalResult:
    """`mvh eval retrieval`: open the store, read the labels CSV, evaluate, write `out`/results.json."""
    if not cfg.labels.is_file():
        raise UsageError(f"--labels {cfg.labels}: no such file; give a CSV of tile_id,label")
    if cfg.out is not None:
        check_out_folder(cfg.out)
    store = EmbeddingStore.open(cfg.store)
    labels, notes = load_labels(cfg.labels)
    result = evaluate_retrieval(store, labels, cfg.ks, cfg.leave_out, use_index=cfg.use_index,
                                source=str(cfg.labels), progress=progress)
    result.notes[:0] = notes
    if cfg.out is not None:
        try:
            result.write_json(cfg.out / RESULTS_FILE)
        except OSError as exc:
            raise DataError(f"cannot write {cfg.out / RESULTS_FILE}: {exc}") from exc
    return result
