"""Exact search by one streaming pass over a store: the search of a store version that has no index, and
the ground truth of `benchmarks/scale.py` (recall of the index against exact search).

`scan_top_k` keeps, per query, the k best rows seen so far while the store's done tiles go by in batches
(`EmbeddingStore.scan_tiles`), so memory is one batch plus [Q, k]. `StoreScanIndex` wraps it in the
interface of `VectorIndex`, so a read-only user's `mvh search` / `mvh serve` of a version without an
index answers exactly (and says so in its notes) instead of failing. Row ids are positions in the scan,
which is fixed for a handle that reads one table version (read-only or pinned).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mvh.core.vectors import l2_normalise
from mvh.index.faiss_index import VectorIndex
from mvh.index.params import IndexParams
from mvh.index.row_parts import ROW_COLUMNS
from mvh.index.shards import raw_embeddings
from mvh.index.top_k import TopK
from mvh.store import DONE, EmbeddingStore

EXACT = IndexParams(kind="exact")


def _batches(store: EmbeddingStore, columns: Sequence[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row id, batch) over the store's done tiles, in scan order."""
    seen = 0
    for _, batch in store.scan_tiles(store.slide_ids(DONE), list(dict.fromkeys(["slide_id", *columns]))):
        yield seen, batch
        seen += batch.num_rows


def scan_top_k(
    store: EmbeddingStore, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k over every done tile: scores [Q, k] and scan row ids [Q, k] (-1 past the end).

    Ties go to the lower row id (`mvh.index.top_k.TopK`, one store batch a block).
    """
    q = l2_normalise(queries)
    best = TopK(len(q), k)
    for first, batch in _batches(store, ["embedding"]):
        sims = q @ l2_normalise(raw_embeddings(store, batch)).T
        if allowed is not None:
            sims[:, ~allowed[first : first + batch.num_rows]] = -np.inf
        best.add(sims, np.arange(first, first + batch.num_rows, dtype=np.int64))
    return best.result()


class StoreRows:
    """The rows of a store in scan order, read by streaming (only the slide of each row is kept)."""

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store
        self.slides = store.slide_ids(DONE)
        codes = [index.astype(np.int32) for index, _ in store.scan_tiles(self.slides, ["slide_id"])]
        self.codes = np.concatenate(codes) if codes else np.zeros(0, np.int32)

    @property
    def n(self) -> int:
        """Number of rows."""
        return len(self.codes)

    def _pick(self, ids: np.ndarray, columns: Sequence[str]) -> pa.Table:
        ids = np.asarray(ids, dtype=np.int64)
        parts, where = [], []
        for first, batch in _batches(self.store, columns):
            local = ids - first
            inside = np.flatnonzero((local >= 0) & (local < batch.num_rows))
            if len(inside):
                parts.append(
                    pa.Table.from_batches([batch.take(pa.array(local[inside]))]).select(list(columns))
                )
                where.append(inside)
        table = pa.concat_tables(parts) if parts else pa.table({c: [] for c in columns})
        order = np.argsort(np.concatenate(where)) if where else np.zeros(0, np.int64)
        return table.take(pa.array(order))

    def take(self, ids: np.ndarray) -> pd.DataFrame:
        """Tile rows of row ids `ids` (one pass over the store)."""
        return self._pick(ids, ROW_COLUMNS).to_pandas()  # only the rows asked for (a search's hits)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of `ids` as float32 (one pass over the store)."""
        column = self._pick(ids, ["embedding"]).column("embedding")
        return column.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, self.store.dim)

    def slide_mask(self, slide_ids: Sequence[str]) -> np.ndarray:
        """Bool [n]: rows of the given slides."""
        wanted = [i for i, s in enumerate(self.slides) if s in set(map(str, slide_ids))]
        return np.isin(self.codes, wanted)

    def tile_rows(self, tile_ids: Sequence[str]) -> np.ndarray:
        """Row ids of `tile_ids` (-1 when not held; one pass over the store's tile ids)."""
        position = {str(t): i for i, t in enumerate(tile_ids)}
        out = np.full(len(tile_ids), -1, dtype=np.int64)
        for first, batch in _batches(self.store, ["tile_id"]):
            for j, tile in enumerate(batch.column("tile_id").to_pylist()):
                if tile in position:
                    out[position[tile]] = first + j
        return out

    def find(self, slide_id: str, x: int, y: int) -> int:
        """Row id of the tile at (x, y) of `slide_id` (-1 when none)."""
        for first, batch in _batches(self.store, ["x", "y"]):
            hit = np.flatnonzero(
                (np.asarray(batch.column("slide_id").to_pylist(), dtype=object) == slide_id)
                & (batch.column("x").to_numpy() == x)
                & (batch.column("y").to_numpy() == y)
            )
            if len(hit):
                return int(first + hit[0])
        return -1


class _ScanSearcher:
    """The FAISS-index face of a scan: `d`, `ntotal` and an exact `search` with an allowed mask."""

    def __init__(self, store: EmbeddingStore, n: int) -> None:
        self.store, self.d, self.ntotal = store, store.dim, n

    def search_allowed(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of unit queries `q` among the allowed rows."""
        return scan_top_k(self.store, q, k, allowed)


def scan_index(store: EmbeddingStore, why: str) -> VectorIndex:
    """A `VectorIndex` that searches `store` exactly by streaming it, with `why` in its notes."""
    rows = StoreRows(store)
    note = (
        f"exact search (a full pass over the store): {why}; build a private index with "
        f"`mvh index build --store {store.location.describe()} --index-cache DIR` for fast searches"
    )
    meta: dict[str, Any] = {"exact": True, "notes": [note]}
    return VectorIndex(index=_ScanSearcher(store, rows.n), rows=rows, params=EXACT, meta=meta)
