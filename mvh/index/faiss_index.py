"""A FAISS index: build one from embeddings, search it, turn row ids back into tile rows.

Embeddings are L2-normalised (`mvh.core.vectors.l2_normalise`) and compared by inner product, so every
score is a cosine similarity. An IVF-PQ index with `refine="stored"` re-ranks its top `k_factor * k`
candidates by exact cosine on their stored vectors, read by row id from the index's row source
(`mvh.index.row_parts`: memory-mapped on disk), so no copy of the vectors is held in RAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pandas as pd

from mvh.core.vectors import l2_normalise
from mvh.errors import DataError, UsageError
from mvh.index.coarse import coarse_centroids
from mvh.index.params import COARSE_EF_SEARCH, IndexParams
from mvh.index.row_parts import ROW_COLUMNS, FrameRows, RowSource
from mvh.index.top_k import flat_top_k

__all__ = ["HIT_COLUMNS", "ROW_COLUMNS", "VectorIndex", "build_faiss_index", "empty_index", "train_index"]

_RERANK_BLOCK = 1 << 24  # floats of the [queries, candidates, dim] block of one re-rank step
PQ_TRAIN_ROWS = 65_536  # 256 points for each of 256 centroids: what FAISS keeps of an 8-bit PQ's sample
_RERANK_ROWS = 1 << 16  # candidates (queries x k_factor x k) whose stored vectors one search reads at once
HIT_COLUMNS = ("query", "rank", "slide_id", "tile_id", "x", "y", "mpp", "score")


def empty_index(params: IndexParams, dim: int) -> faiss.Index:
    """An untrained FAISS index of `params` over `dim`-d vectors (inner product)."""
    if params.kind == "flat":
        return faiss.IndexFlatIP(dim)  # the class a serialised copy comes back as, so shards can merge
    index = faiss.index_factory(dim, params.factory_string(), faiss.METRIC_INNER_PRODUCT)
    if params.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = int(params.ef_construction or 40)
    return index


def train_index(index: faiss.Index, sample: np.ndarray, params: IndexParams, seed: int = 0) -> None:
    """Train an IVF-PQ `index` on `sample` (other kinds need no training): its cells by two-level k-means
    (`mvh.index.coarse`), then FAISS trains the product quantiser on the residuals."""
    if params.kind != "ivfpq":
        return
    unit = l2_normalise(sample)
    ivf = faiss.extract_index_ivf(index)
    centroids = coarse_centroids(unit, int(params.nlist or 1), seed)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # FAISS links HNSW nodes in parallel, in no fixed order: one thread
    try:  # builds the same graph every time, so two builds from one sample assign every vector alike
        ivf.quantizer.add(centroids)
    finally:
        faiss.omp_set_num_threads(threads)
    if params.coarse == "hnsw":
        faiss.downcast_index(ivf.quantizer).hnsw.efSearch = COARSE_EF_SEARCH
    # The quantiser holds nlist centroids, so FAISS trains only the PQ codebooks, on a seeded subset:
    # FAISS samples 256 points per PQ centroid anyway, and residuals of the whole sample are its size again
    if len(unit) > PQ_TRAIN_ROWS:
        unit = unit[np.sort(np.random.default_rng(seed).choice(len(unit), PQ_TRAIN_ROWS, replace=False))]
    index.train(unit)


def training_rows(n: int, params: IndexParams) -> int:
    """How many vectors an IVF-PQ index of `params` is trained on: 64 per cell, at least 50,000."""
    return min(n, max(64 * int(params.nlist or 1), 50_000))


def build_faiss_index(
    embeddings: np.ndarray, params: IndexParams, seed: int = 0, use_gpu: bool | None = None
) -> faiss.Index:
    """A trained FAISS index over the L2-normalised `embeddings` [N, D] (row i gets id i), on CPU."""
    x = l2_normalise(embeddings)
    n, dim = x.shape
    index = empty_index(params, dim)
    target = to_gpu(index) if want_gpu(use_gpu) and params.kind == "flat" else index
    if params.kind == "ivfpq":
        rows = np.sort(np.random.default_rng(seed).choice(n, size=training_rows(n, params), replace=False))
        train_index(index, x[rows], params, seed=seed)
    target.add(x)
    return faiss.index_gpu_to_cpu(target) if target is not index else index


def want_gpu(use_gpu: bool | None) -> bool:
    """Whether to use FAISS GPUs: `None` = when there are any."""
    return (faiss.get_num_gpus() > 0) if use_gpu is None else bool(use_gpu and faiss.get_num_gpus() > 0)


def to_gpu(index: faiss.Index) -> faiss.Index:
    """`index` cloned onto all GPUs (exact inner product; float32 storage, no float16 shortcuts)."""
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = False
    return faiss.index_cpu_to_all_gpus(index, co=options)


def _search_parameters(params: IndexParams, k: int, selector: Any) -> Any:
    """Per-call FAISS search parameters (selector, nprobe, efSearch, k_factor) for `index`."""
    if params.kind == "ivfpq":
        base = faiss.SearchParametersIVF(sel=selector, nprobe=int(params.nprobe or 1))
        if params.refine in (None, "stored"):
            return base
        return faiss.IndexRefineSearchParameters(k_factor=float(params.k_factor or 1), base_index_params=base)
    if params.kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=max(int(params.ef_search or 16), k))
    return faiss.SearchParameters(sel=selector)


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """Queries as float32 [Q, dim] (a single [dim] vector becomes [1, dim]); DataError if not finite."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise UsageError(f"queries have shape {q.shape} but the index holds dim {dim}")
    if not np.isfinite(q).all():
        bad = np.flatnonzero(~np.isfinite(q).all(axis=1))
        raise DataError(
            f"query embedding(s) {bad[:5].tolist()} hold NaN/inf values: check the query image, or run "
            "`mvh verify` on the store the query tile came from"
        )
    return q


@dataclass
class VectorIndex:
    """A FAISS index with its row source (row i -> tile, and its stored vector) and build metadata.

    `rows` may be given as a DataFrame (in-memory indexes): it is wrapped in `FrameRows`.
    """

    index: faiss.Index
    rows: RowSource | pd.DataFrame
    params: IndexParams
    meta: dict[str, Any] = field(default_factory=dict)
    gpu_index: faiss.Index | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rows, pd.DataFrame):
            self.rows = FrameRows(self.rows)

    @property
    def n(self) -> int:
        """Number of indexed tiles."""
        return int(self.index.ntotal)

    def search_ids(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, k_factor: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores [Q, k] and row ids [Q, k] (-1 when fewer rows qualify) of the top-k rows per query.

        `allowed` [n] bool restricts the candidate rows (a FAISS ID selector on the CPU index).
        `k_factor` overrides the index's re-rank width (k_factor * k candidates re-scored on stored vectors).
        """
        if k < 1:
            raise UsageError(f"-k must be at least 1, got {k}")
        q = l2_normalise(check_queries(queries, self.index.d))
        if self.params.kind == "exact":  # mvh.index.store_scan: no FAISS index, a pass over the store
            return self.index.search_allowed(q, k, None if allowed is None else np.asarray(allowed, bool))
        if allowed is None and self.gpu_index is not None:
            scores, ids = self.gpu_index.search(q, k)
            return scores, ids.astype(np.int64)
        selector = None
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (self.n,):
                raise UsageError(f"allowed mask has shape {allowed.shape}, expected ({self.n},)")
        if self.params.kind == "flat":  # FAISS's own vectors, searched block by block (mvh.index.top_k)
            d = self.index.d
            base = faiss.rev_swig_ptr(self.index.get_xb(), self.n * d) if self.n else np.zeros(0, np.float32)
            return flat_top_k(base.reshape(self.n, d), q, k, allowed)
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bitmap))
        # The selector borrows `bitmap`, which stays alive in this frame until the search returns.
        params = _search_parameters(self.params, k, selector)
        if self.params.refine != "stored":
            scores, ids = self.index.search(q, k, params=params)
            return scores, ids.astype(np.int64)
        factor = int(k_factor or self.params.k_factor or 1)
        wide = min(max(k, k * factor), max(self.n, 1))
        # queries in blocks of at most _RERANK_ROWS candidates: an overlap's batch of 65,536 tiles would
        # otherwise read up to 5M stored vectors at once (3.4 GB of heap at 10M tiles)
        step = max(1, _RERANK_ROWS // wide)
        blocks = []
        for start in range(0, max(len(q), 1), step):
            _, candidates = self.index.search(q[start : start + step], wide, params=params)
            blocks.append(self._rerank(q[start : start + step], candidates.astype(np.int64), k))
        return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])

    def _rerank(self, q: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine of each query with its candidates' stored vectors; top-k (ties: lower row id).

        The stored vectors are read once per distinct candidate, and the cosines are formed in chunks of
        queries, so a 15,000-tile query slide never builds a [Q, wide, dim] array.
        """
        found = candidates >= 0
        unique = np.unique(candidates[found])
        stored = self.rows.vectors(unique)
        if stored is None:
            raise UsageError("this index re-ranks by stored vectors, but its rows hold none")
        unit = l2_normalise(stored) if len(unique) else np.zeros((0, q.shape[1]), np.float32)
        position = np.searchsorted(unique, np.where(found, candidates, 0)) if len(unique) else candidates * 0
        sims = np.full(candidates.shape, -np.inf, dtype=np.float32)
        step = max(1, _RERANK_BLOCK // max(1, candidates.shape[1] * q.shape[1]))
        for start in range(0, len(q), step):
            stop = min(len(q), start + step)
            block = np.einsum("qd,qjd->qj", q[start:stop], unit[position[start:stop]]) if len(unique) else 0
            sims[start:stop] = np.where(found[start:stop], block, -np.inf)
        tie = np.where(found, candidates, np.iinfo(np.int64).max)
        order = np.lexsort((tie, -sims), axis=1)[:, :k]
        scores = np.take_along_axis(sims, order, axis=1)
        ids = np.where(np.isfinite(scores), np.take_along_axis(candidates, order, axis=1), -1)
        if ids.shape[1] < k:
            pad = ((0, 0), (0, k - ids.shape[1]))
            scores, ids = np.pad(scores, pad, constant_values=-np.inf), np.pad(ids, pad, constant_values=-1)
        return scores, ids

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
        """Search results as tile rows: query, rank, slide_id, tile_id, x, y, mpp, score."""
        q_idx, rank = np.nonzero(ids >= 0)
        rows = self.rows.take(ids[q_idx, rank])
        return pd.DataFrame(
            {
                "query": q_idx.astype(np.int64),
                "rank": (rank + 1).astype(np.int64),
                "slide_id": rows["slide_id"].to_numpy(),
                "tile_id": rows["tile_id"].to_numpy(),
                "x": rows["x"].to_numpy(np.int64),
                "y": rows["y"].to_numpy(np.int64),
                "mpp": rows["mpp"].to_numpy(np.float64),
                "score": scores[q_idx, rank].astype(np.float64),
            }
        )

    def slide_mask(self, slide_ids: Sequence[str]) -> np.ndarray:
        """Bool [n]: True for rows of the given slides."""
        return self.rows.slide_mask(slide_ids)

    def tile_rows(self, tile_ids: Sequence[str]) -> np.ndarray:
        """Row ids [len(tile_ids)] of the given tile ids in the index (-1 for ids it does not hold)."""
        return self.rows.tile_rows(tile_ids)
