"""Search a store's index: the top-k tiles of each query, or slides ranked by a multi-tile query."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mvh.core.vectors import l2_normalise
from mvh.index.faiss_index import VectorIndex, check_queries
from mvh.index.index_files import load_index
from mvh.store import EmbeddingStore

MOSAIC_TILES = 128  # query tiles kept of a large query slide (`representative_tiles`)
MOSAIC_TRAIN_PER_CENTRE = 32  # k-means points per centre (4,096 of a 15,000-tile slide)
MOSAIC_ITERATIONS = 8
SLIDE_COLUMNS = (
    "rank", "slide_id", "score", "n_hits", "n_query_tiles", "tile_id", "x", "y", "mpp", "tile_score",
)


def search(
    store: EmbeddingStore,
    query_embeddings: np.ndarray,
    k: int = 10,
    exclude_slides: Sequence[str] | None = None,
    index: VectorIndex | None = None,
    exclude_tiles: Sequence[str | None] | None = None,
    k_factor: int | None = None,
) -> pd.DataFrame:
    """Top-k tiles per query [Q, dim] as rows: query, rank, slide_id, tile_id, x, y, mpp, score (cosine).

    `exclude_tiles` [Q] names, per query, a tile it must not retrieve (its own tile, for a stored-tile
    query; None = none): one more hit is searched and that tile dropped, so k hits remain when possible.
    `k_factor` overrides the index's re-rank width (`VectorIndex.search_ids`).
    """
    index = index if index is not None else load_index(store)
    queries = check_queries(query_embeddings, index.index.d)
    allowed = ~index.slide_mask(exclude_slides) if exclude_slides else None
    own = None if exclude_tiles is None else [t for t in exclude_tiles]
    if own is not None and len(own) != len(queries):
        raise ValueError(f"exclude_tiles has {len(own)} entries for {len(queries)} queries")
    extra = 1 if own is not None and any(t is not None for t in own) else 0
    wanted = min(k + extra, max(index.n, 1))
    scores, ids = index.search_ids(queries, wanted, allowed=allowed, k_factor=k_factor)
    hits = index.hits(scores, ids)
    if extra:
        drop = hits["tile_id"].to_numpy() == np.asarray(own, dtype=object)[hits["query"].to_numpy()]
        hits = hits[~drop].copy()
        hits["rank"] = hits.groupby("query").cumcount().to_numpy(np.int64) + 1
        hits = hits[hits["rank"] <= k].reset_index(drop=True)
    return hits


def search_slides(
    store: EmbeddingStore,
    query_embeddings: np.ndarray,
    k: int = 10,
    exclude_slides: Sequence[str] | None = None,
    index: VectorIndex | None = None,
    tiles_per_query: int | None = None,
    exclude_tiles: Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """Slides ranked by similarity to a query made of one or more tiles [Q, dim] (see below).

    For each query tile q the index returns its K best tiles (K = `tiles_per_query`, default
    max(100, 10 k)); an IVF-PQ index re-scores exactly the K best of its PQ order (k_factor 1: the
    slide's ranking needs many hits per tile, not the exact order of each tile's top few, and the
    128-tile mosaic of a 15,000-tile slide then reads 12,800 stored vectors, not 102,400). A target
    slide S gets best_q(S) = the best score among q's hits in S, or, when
    none of q's K hits is in S, q's K-th score (an upper bound of S's true best). The slide score is the
    mean of best_q(S) over the query tiles, so a slide ranks high when most query tiles find a close
    tile in it. Columns: rank, slide_id, score, n_hits (query tiles with a hit in S), n_query_tiles, and
    the best-scoring tile of S (tile_id, x, y, mpp, tile_score). `exclude_tiles` as in `search`.
    """
    index = index if index is not None else load_index(store)
    queries = check_queries(query_embeddings, index.index.d)
    big_k = min(index.n, tiles_per_query or max(100, 10 * k))
    hits = search(store, queries, k=big_k, exclude_slides=exclude_slides, index=index,
                  exclude_tiles=exclude_tiles, k_factor=1)
    if hits.empty:
        return pd.DataFrame(columns=list(SLIDE_COLUMNS))
    floor = hits.groupby("query")["score"].min()
    best = hits.sort_values("score", ascending=False, kind="stable").drop_duplicates(["query", "slide_id"])
    table = best.pivot(index="query", columns="slide_id", values="score")
    table = table.reindex(range(queries.shape[0]))
    n_hits = table.notna().sum(axis=0)
    scores = table.to_numpy(np.float64)
    floors = floor.reindex(table.index).to_numpy(np.float64)[:, None]  # NaN: a query tile with no hits
    filled = np.where(np.isnan(scores), floors, scores)
    slide_score = pd.Series(np.nanmean(filled, axis=0), index=table.columns)  # skips NaN, as pandas
    top_tile = best.drop_duplicates("slide_id").set_index("slide_id")
    out = pd.DataFrame({"slide_id": slide_score.index, "score": slide_score.to_numpy(np.float64)})
    out["n_hits"] = n_hits.reindex(out["slide_id"]).to_numpy(np.int64)
    out["n_query_tiles"] = int(queries.shape[0])
    for col in ("tile_id", "x", "y", "mpp"):
        out[col] = top_tile.loc[out["slide_id"], col].to_numpy()
    out["tile_score"] = top_tile.loc[out["slide_id"], "score"].to_numpy(np.float64)
    out = out.sort_values(["score", "slide_id"], ascending=[False, True], kind="stable").head(k)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out[list(SLIDE_COLUMNS)].reset_index(drop=True)


def representative_tiles(embeddings: np.ndarray, max_tiles: int = MOSAIC_TILES, seed: int = 0) -> np.ndarray:
    """Sorted row numbers of at most `max_tiles` tiles that stand for a slide's `embeddings` [N, dim].

    Up to `max_tiles` tiles: all of them. Above: spherical k-means with `max_tiles` centres
    (`MOSAIC_ITERATIONS` iterations, seeded, on at most `MOSAIC_TRAIN_PER_CENTRE` tiles per centre drawn
    at random; a centre left empty keeps its place) and, for each centre, its nearest tile, as
    Yottixel's mosaic keeps a few tiles per cluster: a 15,000-tile query slide costs the search of at
    most `max_tiles` tiles. Matrix products throughout (FAISS's k-means compares points with centres
    without BLAS below 128,000 points in this build: 0.6 s for a 15,000-tile slide).
    """
    n = len(embeddings)
    if n <= max_tiles:
        return np.arange(n)
    unit = l2_normalise(embeddings)
    rng = np.random.default_rng(seed)
    train = unit[np.sort(rng.choice(n, min(n, max_tiles * MOSAIC_TRAIN_PER_CENTRE), replace=False))]
    centres = train[np.sort(rng.choice(len(train), max_tiles, replace=False))]
    for _ in range(MOSAIC_ITERATIONS):
        cell = np.argmax(train @ centres.T, axis=1)
        order = np.argsort(cell, kind="stable")
        held, first = np.unique(cell[order], return_index=True)
        sums = np.zeros_like(centres)
        sums[held] = np.add.reduceat(train[order], first, axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centres = np.where(norms > 0, sums / np.maximum(norms, 1e-12), centres).astype(np.float32)
    return np.unique(np.argmax(centres @ unit.T, axis=1))
