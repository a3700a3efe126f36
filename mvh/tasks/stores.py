"""Which store holds a model's embeddings for a task (an existing store, or one filled on demand), and
the streamed reader that takes the tiles a task needs out of it (`select_tiles`)."""

from __future__ import annotations

import mmap
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mvh.store import EmbeddingStore


@dataclass
class StoreSpec:
    """An existing store (`uri` only), or a registered `model` whose store at `uri` is created/reused.

    `label` names the model in result tables (default: the model name).
    """

    uri: str
    model: str | None = None
    weights: str | None = None
    random_init: bool = False
    label: str | None = None


def open_spec(
    spec: StoreSpec, device: str = "auto", mpp: float = 0.5, tile_px: int = 224
) -> tuple[str, EmbeddingStore, Callable[[], Any]]:
    """(label, store, embedder factory) for `spec`; the factory builds the store's exact backbone.

    A `model` spec opens or creates its store with the fingerprint of that model and weights at
    `mpp`/`tile_px` (FingerprintMismatchError when the store holds another model or weights).
    """
    from mvh.extractor.embedder import Embedder

    if spec.model is not None:
        embedder = Embedder(spec.model, spec.weights, spec.random_init, device=device)
        store = EmbeddingStore.open_or_create(spec.uri, embedder.fingerprint(mpp=mpp, tile_px=tile_px))
        return spec.label or spec.model, store, lambda: embedder
    store = EmbeddingStore.open(spec.uri)

    def factory() -> Any:
        return Embedder.from_fingerprint(store.fingerprint, spec.weights, device=device)

    return spec.label or store.fingerprint.model, store, factory


MEMMAP_BYTES = 1 << 30  # a selection larger than this is filled into a memory-mapped temporary file
SEP = "\x1f"  # joins slide and tile ids in keys: slide ids never hold control characters


def allocate(n: int, dim: int, dtype: Any = np.float32) -> np.ndarray:
    """A zeroed [n, dim] array: in RAM when small, else memory-mapped from an unlinked temp file (the
    pages are the kernel's to evict, so a cohort-sized selection never has to fit in RAM)."""
    if n * dim * np.dtype(dtype).itemsize <= MEMMAP_BYTES:
        return np.zeros((n, dim), dtype=dtype)
    from mvh.store.location import cache_root

    folder = cache_root() / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".npy") as handle:
        return np.lib.format.open_memmap(handle.name, mode="w+", dtype=dtype, shape=(n, dim))


RESIDENT_BYTES = 256 << 20  # pages of a memory-mapped selection kept mapped before they are let go


class MappedPages:
    """Keeps the resident pages of a memory-mapped array (from `allocate`) near `limit` bytes.

    Pages written or read through a shared file mapping count in the process's RSS until the kernel
    needs the memory; a cohort-sized array would so grow the RSS to the whole file. Call `touched(n)`
    after n bytes went through the array: past `limit`, the mapping's pages are dropped from this
    process (MADV_DONTNEED; their contents stay in the file and the page cache, and the next access
    maps them back). Arrays in RAM are left alone.
    """

    def __init__(self, array: np.ndarray, limit: int = RESIDENT_BYTES) -> None:
        self._mapping = array._mmap if isinstance(array, np.memmap) else None  # the array's mmap.mmap
        self.limit, self._since = int(limit), 0

    def touched(self, nbytes: int) -> None:
        """Count `nbytes` more through the array; drop its pages once past the limit."""
        if self._mapping is None:
            return
        self._since += int(nbytes)
        if self._since > self.limit:
            self._mapping.madvise(mmap.MADV_DONTNEED)
            self._since = 0


def select_tiles(
    store: EmbeddingStore,
    keys: Sequence[str],
    key: Callable[[pa.RecordBatch], np.ndarray],
    slide_ids: Sequence[str] | None = None,
    columns: Sequence[str] = ("slide_id", "tile_id"),
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The tiles whose `key(batch)` value is one of `keys`, in the order of `keys`: their rows
    (`columns`; None where not found), embeddings [len(keys), dim] float32 (zeros where not found) and a
    found mask. One streamed scan of `slide_ids` (default: every done slide), a batch at a time, so
    memory is the selection, never the store; the store's checks apply (NaN/inf is StoreDamagedError).
    """
    from mvh.index.shards import raw_embeddings

    wanted = pd.Index([str(k) for k in keys])
    if not wanted.is_unique:
        raise ValueError("select_tiles needs unique keys")
    emb = allocate(len(wanted), store.dim)
    found = np.zeros(len(wanted), dtype=bool)
    values = {c: np.full(len(wanted), None, dtype=object) for c in columns}
    slides = store.slide_ids() if slide_ids is None else list(slide_ids)
    for _, batch in store.scan_tiles(slides, list(dict.fromkeys([*columns, "slide_id", "embedding"]))):
        position = wanted.get_indexer(key(batch))
        hit = np.flatnonzero(position >= 0)
        if not len(hit):
            continue
        emb[position[hit]] = raw_embeddings(store, batch.take(pa.array(hit)))
        found[position[hit]] = True
        for column in columns:
            values[column][position[hit]] = np.asarray(batch.column(column).to_pylist(), dtype=object)[hit]
    return pd.DataFrame(values), emb, found


def tile_key(batch: pa.RecordBatch) -> np.ndarray:
    """The `tile_id` of each row of a tile batch (a `select_tiles` key)."""
    return np.asarray(batch.column("tile_id").to_pylist(), dtype=object)


def slide_tile_key(batch: pa.RecordBatch) -> np.ndarray:
    """`slide_id` + SEP + `tile_id` of each row (a `select_tiles` key for per-slide tile names)."""
    pairs = zip(batch.column("slide_id").to_pylist(), batch.column("tile_id").to_pylist(), strict=True)
    return np.asarray([f"{s}{SEP}{t}" for s, t in pairs], dtype=object)


def read_slides(
    store: EmbeddingStore, slide_ids: Sequence[str], columns: Sequence[str] = ("slide_id", "tile_id")
) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows (`columns`) and embeddings [N, dim] float32 of every tile of the done `slide_ids`, in scan
    order: one streamed scan filling an array sized from the slides rows (memory-mapped when large)."""
    from mvh.errors import StoreDamagedError
    from mvh.index.shards import raw_embeddings

    done = store.slides(status="done").set_index("slide_id")
    n = int(done.loc[list(slide_ids), "n_tiles"].sum()) if len(slide_ids) else 0
    emb = allocate(n, store.dim)
    parts, filled = [], 0
    wanted = list(dict.fromkeys([*columns, "slide_id", "embedding"]))
    for _, batch in store.scan_tiles(list(slide_ids), wanted):
        if filled + batch.num_rows > n:
            break
        emb[filled : filled + batch.num_rows] = raw_embeddings(store, batch)
        parts.append(batch.select(list(columns)).to_pandas())  # one batch of the selected slides' rows
        filled += batch.num_rows
    if filled != n:
        raise StoreDamagedError(
            f"store {store.uri}: slides {list(slide_ids)[:5]} hold other tile counts than their rows record; "
            f"run `mvh verify --store {store.uri}`"
        )
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in columns})
    return rows, emb
