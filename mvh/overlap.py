"""Leakage check between two stores: slides present in both, and near-duplicate tiles across them.

A team runs this before evaluating on another team's cohort: the same slide file (same content hash)
in both stores, or tiles whose embeddings are near-identical (cosine >= threshold, exact search), mean the
test set is not independent of the training set. Both stores must hold the same model, weights and tile
geometry, else cosines are meaningless and the check is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mvh.errors import FingerprintMismatchError, UsageError
from mvh.index.exact import exact_search
from mvh.jobs import JobResult
from mvh.progress import Event, Progress, report
from mvh.store import DONE, EmbeddingStore

MAX_LISTED = 20


@dataclass(frozen=True)
class OverlapConfig:
    """Two stores (already opened) and the cosine above which two tiles count as near-duplicates."""

    threshold: float = 0.95

    def __post_init__(self) -> None:
        if not (np.isfinite(self.threshold) and -1.0 <= self.threshold <= 1.0):
            raise UsageError(f"--threshold {self.threshold}: give a cosine between -1 and 1, e.g. 0.95")


@dataclass
class SharedSlide:
    """A slide file present in both stores (same content hash), under each store's id and path."""

    file_hash: str
    slide_a: str
    slide_b: str
    path_a: str | None
    path_b: str | None


@dataclass
class TilePair:
    """A tile of B and its nearest tile of A, with their cosine."""

    tile_b: str
    tile_a: str
    cosine: float


@dataclass
class OverlapResult(JobResult):
    """What the two stores share."""

    store_a: str
    store_b: str
    model: str
    threshold: float
    n_slides_a: int
    n_slides_b: int
    n_tiles_a: int
    n_tiles_b: int
    shared_slides: list[SharedSlide] = field(default_factory=list)
    n_near_duplicate_tiles: int = 0
    n_near_duplicate_tiles_outside_shared_slides: int = 0
    slides_b_with_near_duplicates: dict[str, int] = field(default_factory=dict)
    closest_pairs: list[TilePair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def leakage(self) -> bool:
        """Whether anything is shared."""
        return bool(self.shared_slides) or self.n_near_duplicate_tiles > 0


def _shared_slides(a: EmbeddingStore, b: EmbeddingStore, notes: list[str]) -> list[SharedSlide]:
    slides_a, slides_b = a.slides(status=DONE), b.slides(status=DONE)
    for store, frame in ((a, slides_a), (b, slides_b)):
        unhashed = int(frame["file_hash"].isna().sum()) if "file_hash" in frame else len(frame)
        if unhashed:
            notes.append(f"{unhashed} slide(s) of {store.uri} have no file hash (imported features): "
                         "they are compared by tiles only")
    if "file_hash" not in slides_a or "file_hash" not in slides_b:
        return []
    by_hash = {h: row for h, row in zip(slides_a["file_hash"], slides_a.to_dict("records"), strict=True) if h}
    shared = []
    for row in slides_b.to_dict("records"):
        match = by_hash.get(row["file_hash"]) if row["file_hash"] else None
        if match is not None:
            shared.append(SharedSlide(row["file_hash"], match["slide_id"], row["slide_id"], match.get("path"),
                                      row.get("path")))
    return shared


def run_overlap(
    a: EmbeddingStore, b: EmbeddingStore, config: OverlapConfig, *, progress: Progress | None = None
) -> OverlapResult:
    """Slides of B also in A (by file content hash), and B's tiles with a near-duplicate in A."""
    if not a.fingerprint.matches(b.fingerprint):
        raise FingerprintMismatchError(
            f"stores {a.uri} <{a.fingerprint.describe()}> and {b.uri} <{b.fingerprint.describe()}> hold "
            "different models, weights or tile geometry: overlap needs stores of the same model"
        )
    notes: list[str] = []
    shared = _shared_slides(a, b, notes)
    report(progress, Event.TOTAL, "stores", 2)
    rows_a, emb_a = a.all_embeddings(columns=("slide_id", "tile_id"))
    report(progress, Event.ADVANCE, "stores")
    rows_b, emb_b = b.all_embeddings(columns=("slide_id", "tile_id"))
    report(progress, Event.ADVANCE, "stores")
    result = OverlapResult(
        store_a=a.uri, store_b=b.uri, model=a.fingerprint.model, threshold=config.threshold,
        n_slides_a=len(a.slide_ids()), n_slides_b=len(b.slide_ids()), n_tiles_a=len(rows_a),
        n_tiles_b=len(rows_b), shared_slides=shared, notes=notes,
    )
    if not len(rows_a) or not len(rows_b):
        return result
    scores, ids = exact_search(emb_a, emb_b, k=1)
    best, nearest = scores[:, 0], ids[:, 0]
    hit = best >= config.threshold
    shared_b = {s.slide_b for s in shared}
    slide_b = rows_b["slide_id"].to_numpy()
    result.n_near_duplicate_tiles = int(hit.sum())
    result.n_near_duplicate_tiles_outside_shared_slides = int((hit & ~np.isin(slide_b, list(shared_b))).sum())
    ids_b, counts = np.unique(slide_b[hit], return_counts=True)
    result.slides_b_with_near_duplicates = {str(s): int(c) for s, c in zip(ids_b, counts, strict=True)}
    order = np.argsort(-best, kind="stable")[: min(MAX_LISTED, int(hit.sum()))]
    result.closest_pairs = [
        TilePair(str(rows_b["tile_id"].iloc[i]), str(rows_a["tile_id"].iloc[nearest[i]]), float(best[i]))
        for i in order
    ]
    return result
