"""An index built in shards of slides, streamed from the store in batches: the one-process and the Ray
build share these steps, so both give the same index.

1. `plan_shards`: the done slides in id order, cut into shards of about `shard_tiles` tiles.
2. `training_sample`: a bounded random sample of tiles (IVF-PQ training), read from a random subset of
   slides holding at least 4x the sample (never the whole store).
3. `add_shard`: stream one shard's tiles from the store (`EmbeddingStore.scan_tiles`, 65,536 rows a
   batch), write its row part (`mvh.index.row_parts`) and add the normalised vectors to an index.
4. `merge_into`: append a shard's index to the merged one (FAISS `merge_from`, the documented way to
   build an IVF index from shards built apart), ids shifted to follow the rows already merged.

Peak memory: one batch, the training sample (64 x nlist vectors, at least 50,000) and the index
structure itself (IVF-PQ 4-bit codes: dim / 16 bytes a tile plus an 8-byte id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from mvh.core.vectors import l2_normalise
from mvh.errors import StoreDamagedError
from mvh.index.row_parts import ROW_COLUMNS, PartWriter
from mvh.store import EmbeddingStore

SHARD_TILES = 1_000_000
SAMPLE_FACTOR = 4  # the sample is drawn from slides holding at least this many times its size


@dataclass(frozen=True)
class Shard:
    """Slides added together: one row part, one Ray task."""

    slides: tuple[str, ...]
    n: int


def plan_shards(state: dict[str, list[Any]], shard_tiles: int = SHARD_TILES) -> list[Shard]:
    """Done slides (`slide_state`) in id order, cut into shards of at least `shard_tiles` tiles (the last
    may be smaller); a slide is never split."""
    shards, current, count = [], [], 0
    for slide_id in sorted(state):
        current.append(slide_id)
        count += int(state[slide_id][0])
        if count >= shard_tiles:
            shards.append(Shard(tuple(current), count))
            current, count = [], 0
    if current:
        shards.append(Shard(tuple(current), count))
    return shards


def raw_embeddings(store: EmbeddingStore, batch: pa.RecordBatch) -> np.ndarray:
    """A batch's embeddings [B, dim] as stored (float16 or float32); StoreDamagedError on NaN/inf."""
    column = batch.column("embedding")
    raw = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, store.dim)
    bad = ~np.isfinite(raw).all(axis=1)
    if bad.any():
        names = sorted(set(np.asarray(batch.column("slide_id").to_pylist(), dtype=object)[bad]))
        raise StoreDamagedError(
            f"store {store.uri}: non-finite embedding values in slide(s) {names[:5]} (a damaged data file); "
            f"run `mvh verify --store {store.uri}`, then re-extract them with --overwrite"
        )
    return raw


def training_sample(store: EmbeddingStore, state: dict[str, list[Any]], size: int, seed: int) -> np.ndarray:
    """`size` tiles [size, dim] float32, drawn at random from a random subset of the done slides."""
    rng = np.random.default_rng(seed)
    slides = sorted(state)
    chosen, total = [], 0
    for i in rng.permutation(len(slides)):
        chosen.append(slides[i])
        total += int(state[slides[i]][0])
        if total >= SAMPLE_FACTOR * size:
            break
    size = min(size, total)
    wanted = np.sort(rng.choice(total, size=size, replace=False))
    out = np.empty((size, store.dim), dtype=np.float32)
    seen = filled = 0
    for _, batch in store.scan_tiles(sorted(chosen), ["slide_id", "embedding"]):
        lo, hi = np.searchsorted(wanted, [seen, seen + batch.num_rows])
        if hi > lo:
            out[filled : filled + hi - lo] = raw_embeddings(store, batch)[wanted[lo:hi] - seen]
            filled += hi - lo
        seen += batch.num_rows
    if filled != size:
        raise StoreDamagedError(
            f"store {store.uri}: the sampled slides hold {seen} tiles, their rows count {total}; run "
            f"`mvh verify --store {store.uri}`"
        )
    return out


def add_shard(
    store: EmbeddingStore,
    index: faiss.Index,
    shard: Shard,
    folder: Path,
    advance: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Stream `shard`'s tiles into `index` (in place) and into a new row part in `folder`; its entry."""
    writer = PartWriter(folder, shard.slides, shard.n, store.dim, store.fingerprint.embedding_dtype)
    for _, batch in store.scan_tiles(list(shard.slides), [*ROW_COLUMNS, "embedding"]):
        raw = raw_embeddings(store, batch)
        writer.add(batch, raw)
        index.add(l2_normalise(raw))
        if advance is not None:
            advance(len(raw))
    return writer.close()


def merge_into(merged: faiss.Index, part: faiss.Index) -> None:
    """Append `part`'s vectors to `merged` (ids continue after merged's): IVF lists or flat codes."""
    if isinstance(faiss.downcast_index(merged), faiss.IndexHNSW):
        raise ValueError("HNSW indexes cannot be merged")
    try:
        faiss.extract_index_ivf(merged)
    except RuntimeError:
        merged.merge_from(part, 0)  # flat codes: appended in order, ids are positions
        return
    merged.merge_from(part, merged.ntotal)
