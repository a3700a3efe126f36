"""Leakage check between two stores: slides present in both, and near-duplicate tiles across them.

A team runs this before evaluating on another team's cohort: the same slide file (same content hash)
in both stores, or tiles whose embeddings are near-identical (cosine >= threshold), mean the test set is
not independent of the training set. Both stores must hold the same model, weights and tile geometry,
else cosines are meaningless and the check is refused.

Never all pairs: B's tiles are streamed in batches (`EmbeddingStore.scan_tiles`) and each batch is
searched in A's index (`CANDIDATES` nearest tiles of A per tile); the candidates' cosines are then
computed exactly on A's stored vectors (the index's re-rank by row id), and the best decides. Without a
fresh index of A, each batch of B is compared exactly with a streamed pass over A (fine for small
stores; the result notes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mvh.errors import FingerprintMismatchError, IndexNotFoundError, StaleIndexError, UsageError
from mvh.index.faiss_index import VectorIndex
from mvh.index.index_files import load_index
from mvh.index.shards import raw_embeddings
from mvh.index.store_scan import scan_index
from mvh.jobs import JobResult
from mvh.progress import Event, Progress, report
from mvh.store import DONE, EmbeddingStore

MAX_LISTED = 20
CANDIDATES = 10  # nearest tiles of A per tile of B taken from the index, re-checked exactly


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
class OverlapResult(JobResult, job="overlap"):
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
    # One file can sit in a store under several slide ids: every pair is named, not one per hash.
    by_hash: dict[str, list[dict]] = {}
    for row in slides_a.to_dict("records"):
        if row["file_hash"]:
            by_hash.setdefault(row["file_hash"], []).append(row)
    return [
        SharedSlide(row["file_hash"], match["slide_id"], row["slide_id"], match.get("path"), row.get("path"))
        for row in slides_b.to_dict("records")
        if row["file_hash"]
        for match in by_hash.get(row["file_hash"], [])
    ]


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
    index = _index_of(a, notes)
    n_b = int(b.slides(status=DONE)["n_tiles"].sum()) if len(b.slide_ids()) else 0
    result = OverlapResult(
        store_a=a.uri, store_b=b.uri, model=a.fingerprint.model, threshold=config.threshold,
        n_slides_a=len(a.slide_ids()), n_slides_b=len(b.slide_ids()), n_tiles_a=index.n,
        n_tiles_b=n_b, shared_slides=shared, notes=notes,
    )
    if not index.n or not n_b:
        return result
    report(progress, Event.TOTAL, "tiles", n_b)
    shared_b = {s.slide_b for s in shared}
    per_slide: dict[str, int] = {}
    top: list[tuple[float, str, int]] = []  # (cosine, tile of B, row of A): the closest pairs so far
    for _, batch in b.scan_tiles(b.slide_ids(DONE), ["slide_id", "tile_id", "embedding"]):
        # k_factor 1: exactly the CANDIDATES best of the index's own order are re-checked on stored
        # vectors (a near-duplicate is the first of them); the search default re-ranks 8x as many
        scores, ids = index.search_ids(raw_embeddings(b, batch), min(CANDIDATES, index.n), k_factor=1)
        best, nearest = scores[:, 0], ids[:, 0]
        hit = best >= config.threshold
        slide_b = np.asarray(batch.column("slide_id").to_pylist(), dtype=object)
        result.n_near_duplicate_tiles += int(hit.sum())
        outside = hit & ~np.isin(slide_b, list(shared_b))
        result.n_near_duplicate_tiles_outside_shared_slides += int(outside.sum())
        for slide_id in slide_b[hit]:
            per_slide[str(slide_id)] = per_slide.get(str(slide_id), 0) + 1
        tile_b = batch.column("tile_id").to_pylist()
        for i in np.flatnonzero(hit)[np.argsort(-best[hit], kind="stable")][:MAX_LISTED]:
            top.append((float(best[i]), str(tile_b[i]), int(nearest[i])))
        top = sorted(top, key=lambda t: -t[0])[:MAX_LISTED]
        report(progress, Event.ADVANCE, "tiles", batch.num_rows)
    result.slides_b_with_near_duplicates = dict(sorted(per_slide.items()))
    names_a = index.rows.take(np.array([row for _, _, row in top], dtype=np.int64))["tile_id"].tolist()
    result.closest_pairs = [
        TilePair(tile, str(name), cos) for (cos, tile, _), name in zip(top, names_a, strict=True)
    ]
    return result


def _index_of(a: EmbeddingStore, notes: list[str]) -> VectorIndex:
    """A's fresh index, or an exact streamed scan of A (with a note) when it has none."""
    try:
        return load_index(a, exact_fallback=False)
    except (IndexNotFoundError, StaleIndexError) as exc:
        notes.append(f"compared exactly with a pass over {a.uri} per batch of B ({exc.__class__.__name__}: "
                     f"build its index with `mvh index build --store {a.uri}` for large stores)")
        return scan_index(a, "no fresh index of store A")
