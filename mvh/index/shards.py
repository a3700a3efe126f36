"""An index built in shards of slides, streamed from the store in batches: the one-process and the Ray
build share these steps, so both give the same index.

1. `plan_shards`: the done slides in id order, cut into shards of about `shard_tiles` tiles.
2. `training_sample`: a bounded random sample of tiles (IVF-PQ training) drawn from every done slide in
   proportion to its tile count, streamed in one scan (memory: the sample, never the whole store).
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
from mvh.index.coarse import proportional_counts
from mvh.index.row_parts import ROW_COLUMNS, PartWriter
from mvh.store import EmbeddingStore

SHARD_TILES = 1_000_000


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
    """`size` tiles [size, dim] float32 from every done slide, in proportion to its tiles (seeded).

    Each slide gives `proportional_counts` rows, chosen uniformly at random within it, so the quantiser sees
    every slide's kinds of tissue; one streamed scan keeps memory to the sample and one batch.
    """
    rng = np.random.default_rng(seed)
    slides = sorted(state)
    counts = np.array([int(state[s][0]) for s in slides], dtype=np.int64)
    total = int(counts.sum())
    size = min(size, total)
    quotas = proportional_counts(counts, size) if size else np.zeros(len(slides), dtype=np.int64)
    offsets = np.cumsum(counts) - counts
    # positions in a virtual concatenation of the slides: offset of the slide + rank of the row within it
    picks = [o + rng.choice(n, q, replace=False) for o, n, q in zip(offsets, counts, quotas, strict=True)]
    wanted = np.sort(np.concatenate([np.empty(0, dtype=np.int64), *picks]))
    out = np.empty((size, store.dim), dtype=np.float32)
    seen = np.zeros(len(slides), dtype=np.int64)
    filled = 0
    for index, batch in store.scan_tiles(slides, ["slide_id", "embedding"]):
        order = np.argsort(index, kind="stable")
        grouped = index[order]
        first = np.searchsorted(grouped, grouped)  # each row's group start: ranks rows within a slide
        rank = np.empty_like(index)
        rank[order] = np.arange(len(index)) - first
        position = offsets[index] + seen[index] + rank
        seen += np.bincount(index, minlength=len(slides))
        if (seen > counts).any():  # more rows than counted: positions would spill into the next slide
            break
        at = np.minimum(np.searchsorted(wanted, position), max(len(wanted) - 1, 0))
        hit = np.flatnonzero(wanted[at] == position) if len(wanted) else at[:0]
        if len(hit):
            out[filled : filled + len(hit)] = raw_embeddings(store, batch)[hit]
            filled += len(hit)
    if filled != size or not np.array_equal(seen, counts):
        raise StoreDamagedError(
            f"store {store.uri}: the slides hold {int(seen.sum())} tiles, their rows count {total}; run "
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
    if isinstance(faiss.downcast_index(merged), faiss.IndexIVFFastScan):
        _merge_fast_scan(faiss.downcast_index(merged), faiss.downcast_index(part))
        return
    merged.merge_from(part, merged.ntotal)


def _merge_fast_scan(merged: faiss.IndexIVFFastScan, part: faiss.IndexIVFFastScan) -> None:
    """`merge_from` for fast-scan IVF lists, which FAISS gets wrong: `BlockInvertedLists::add_entries`
    copies whole blocks past the end of a list that already holds a multiple of `block_size` entries
    (1.15: `o % block_size == 0`, a byte count compared with an entry count), corrupting the heap. Such a
    list is re-packed from its codes and the part's; every other list goes through FAISS as before."""
    merged.check_compatible_for_merge(part)
    into = faiss.downcast_InvertedLists(merged.invlists)
    other = faiss.downcast_InvertedLists(part.invlists)
    shift = merged.ntotal
    for lst in range(merged.nlist):
        n = other.list_size(lst)
        if n == 0:
            continue
        ids = faiss.rev_swig_ptr(other.get_ids(lst), n).astype(np.int64) + shift
        held = into.list_size(lst)
        if held == 0 or held % into.block_size:
            into.add_entries(lst, n, faiss.swig_ptr(ids), other.get_codes(lst))
            continue
        old_ids = faiss.rev_swig_ptr(into.get_ids(lst), held).astype(np.int64)
        flat = np.concatenate([_unpack(into, lst, held), _unpack(other, lst, n)])
        all_ids, packed = np.concatenate([old_ids, ids]), _pack(into, flat)  # named: swig_ptr holds no ref
        into.resize(lst, 0)
        into.add_entries(lst, len(all_ids), faiss.swig_ptr(all_ids), faiss.swig_ptr(packed))
    merged.ntotal += part.ntotal
    part.ntotal = 0


def _unpack(lists: Any, lst: int, n: int) -> np.ndarray:
    """The `n` codes of list `lst` of block lists, flat [n, code_size]."""
    packer = lists.packer
    blocks = -(-n // packer.nvec)
    packed = faiss.rev_swig_ptr(lists.get_codes(lst), blocks * packer.block_size)
    flat = np.empty((blocks * packer.nvec, packer.code_size), dtype=np.uint8)
    for b in range(blocks):
        block = faiss.swig_ptr(packed[b * packer.block_size :])
        packer.unpack_all(block, faiss.swig_ptr(flat[b * packer.nvec :]))
    return flat[:n]


def _pack(lists: Any, flat: np.ndarray) -> np.ndarray:
    """Flat codes [n, code_size] packed into the blocks of `lists` (the last block padded with zeros)."""
    packer = lists.packer
    blocks = -(-len(flat) // packer.nvec)
    padded = np.zeros((blocks * packer.nvec, packer.code_size), dtype=np.uint8)
    padded[: len(flat)] = flat
    out = np.zeros(blocks * packer.block_size, dtype=np.uint8)  # PQ4 packing ORs nibbles into place
    for b in range(blocks):
        codes = faiss.swig_ptr(padded[b * packer.nvec :])
        packer.pack_all(codes, faiss.swig_ptr(out[b * packer.block_size :]))
    return out
