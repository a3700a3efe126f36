"""Exact top-k over rows that come in blocks: the streamed store scan and the CPU search of a Flat index.

`TopK` keeps, per query, the k best (score, row id) seen so far; ties go to the lower row id. Each block
adds its own top-k (one `argpartition`), merged with the best so far by a sort of [Q, 2k], so memory is
one block of scores plus [Q, k].

`flat_top_k` searches unit vectors held in RAM (a Flat index's own) by matrix products of a fixed
shape: queries in groups of `QUERY_GROUP` (the last group padded with zero rows) times blocks of
`FLAT_BLOCK_ROWS` rows. A query's scores then come from the same product, in the same arithmetic,
whichever and however many queries share the search, so stacked searches equal lone ones to the bit
(`mvh serve` stacks concurrent requests; tests/serve/test_batching.py and tests/index/test_top_k.py
check it), and the BLAS product is fast. FAISS's `IndexFlatIP` uses BLAS only from
`distance_compute_blas_threshold` queries up (128,000 in this build) and below that streams the whole
matrix once per query: 128 queries over 90,000 tiles took 3.4 s.
"""

from __future__ import annotations

import numpy as np

FLAT_BLOCK_ROWS = 4096  # rows per block: 12 MB of 768-d float32, read once per query chunk
QUERY_GROUP = 16  # queries per product (a lone query costs a 16-row product: ~1 ms per 4,096 rows)
QUERY_CHUNK = 2048  # queries whose [chunk, block] scores are held at once (32 MB)


def _block_top_k(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row of `sims` [Q, B] (ties: lower id), as (scores, ids) [Q, <=k].

    An `argpartition` pass; rows whose k-th best score is tied past the cut (rare) are re-done by a full
    sort, so the lower-id rule holds exactly.
    """
    if sims.shape[1] <= k:
        return sims, np.broadcast_to(ids, sims.shape)
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    part_s = np.take_along_axis(sims, part, axis=1)
    kth = part_s.min(axis=1)
    tied = np.flatnonzero((sims >= kth[:, None]).sum(axis=1) > k)
    part_i = ids[part]
    if len(tied):
        order = np.lexsort((np.broadcast_to(ids, (len(tied), len(ids))), -sims[tied]), axis=1)[:, :k]
        part_s[tied] = np.take_along_axis(sims[tied], order, axis=1)
        part_i[tied] = ids[order]
    return part_s, part_i


class TopK:
    """The k best (score, row id) per query over blocks of rows added in any order."""

    def __init__(self, n_queries: int, k: int) -> None:
        self.k = k
        self.scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
        self.ids = np.full((n_queries, k), -1, dtype=np.int64)

    def add(self, sims: np.ndarray, ids: np.ndarray) -> None:
        """Scores [Q, B] of the rows `ids` [B] (-inf: not a candidate)."""
        top_s, top_i = _block_top_k(sims, ids, self.k)
        all_s = np.concatenate([self.scores, top_s], axis=1)
        all_i = np.concatenate([self.ids, top_i], axis=1)
        order = np.lexsort((np.where(all_i < 0, np.iinfo(np.int64).max, all_i), -all_s), axis=1)[:, : self.k]
        self.scores = np.take_along_axis(all_s, order, axis=1)
        self.ids = np.take_along_axis(all_i, order, axis=1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Scores [Q, k] and row ids [Q, k] (-1 where fewer rows qualified)."""
        ids = self.ids.copy()
        ids[~np.isfinite(self.scores)] = -1
        return self.scores, ids


def flat_top_k(
    base: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product top-k of the queries `q` [Q, d] over the rows of `base` [N, d] (float32), ties to the
    lower row id; `allowed` [N] bool restricts the rows. Batch-invariant (see the module docstring)."""
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    ids = np.full((len(q), k), -1, dtype=np.int64)
    for start in range(0, len(q), QUERY_CHUNK):
        stop = min(len(q), start + QUERY_CHUNK)
        scores[start:stop], ids[start:stop] = _flat_chunk(base, q[start:stop], k, allowed)
    return scores, ids


def _flat_chunk(
    base: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    groups = -(-len(q) // QUERY_GROUP)
    padded = np.zeros((groups * QUERY_GROUP, q.shape[1]), dtype=np.float32)
    padded[: len(q)] = q
    best = TopK(len(q), k)
    sims = np.empty((len(padded), min(FLAT_BLOCK_ROWS, len(base))), dtype=np.float32)
    for first in range(0, len(base), FLAT_BLOCK_ROWS):
        block = base[first : first + FLAT_BLOCK_ROWS]
        for g in range(0, len(padded), QUERY_GROUP):
            sims[g : g + QUERY_GROUP, : len(block)] = padded[g : g + QUERY_GROUP] @ block.T
        out = sims[: len(q), : len(block)]
        if allowed is not None:
            out[:, ~allowed[first : first + len(block)]] = -np.inf
        best.add(out, np.arange(first, first + len(block), dtype=np.int64))
    return best.result()
