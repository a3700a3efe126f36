"""FAISS vector indexes over an embedding store: build, load, stale detection, search.

Embeddings are L2-normalised and compared by inner product, so every score is a cosine similarity.
Kinds:

- `flat`: exact search (IndexFlatIP). `auto` picks it up to `FLAT_MAX_TILES` tiles.
- `ivfpq`: an inverted file (`nlist` k-means cells, `nprobe` visited per query) over product-quantised
  codes (`m` sub-quantisers of `nbits` bits; 4 bits uses FAISS's SIMD "fast-scan" layout), whose top
  `k_factor * k` candidates are re-ranked with 8-bit scalar-quantised vectors (`refine="sq8"`, a quarter
  of the memory of float32) or exact vectors (`refine="flat"`). `auto` picks it above `FLAT_MAX_TILES`.
- `hnsw`: a graph index (HNSW, `hnsw_m` links per node, `ef_search` candidates per query) on exact vectors.

The automatic IVF-PQ parameters (see `auto_params`) reach recall@10 >= 0.95 against exact search on
clustered synthetic embeddings up to 1M vectors (tests/index/test_vector.py, benchmarks/search.py).

On disk, inside `store.index_dir`: `index.json` (kind, parameters, the store version and the per-slide
state the index was built from, file names) and, per build, `tiles-<build>.faiss` plus
`tiles-<build>.parquet` (row i of the index -> slide_id, tile_id, x, y, tile_px, mpp). `index.json` is
replaced last and atomically, so a reader never pairs an index with another build's rows.

Stale detection compares the store's done slides (id, tile count, commit time) with those recorded at
build time; `build_index(..., update=True)` then adds the tiles of new slides only, and rebuilds (with a
note) when slides were removed or re-embedded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mvh.errors import IndexNotFoundError, StaleIndexError, StoreError, UsageError
from mvh.index.store import DONE, EmbeddingStore

log = logging.getLogger(__name__)

FLAT_MAX_TILES = 200_000
KINDS = ("auto", "flat", "ivfpq", "hnsw")
META_FILE = "index.json"
ROW_COLUMNS = ("slide_id", "tile_id", "x", "y", "tile_px", "mpp")
HIT_COLUMNS = ("query", "rank", "slide_id", "tile_id", "x", "y", "mpp", "score")
_FORMAT = 1
_EXACT_BLOCK = 1 << 26  # similarity entries per block of exact search: 256 MB of float32

Progress = Callable[[str, int], None]


# ---------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class IndexParams:
    """The kind of a FAISS index and the parameters it is built and searched with."""

    kind: str
    nlist: int | None = None
    m: int | None = None
    nbits: int | None = None
    nprobe: int | None = None
    refine: str | None = None
    k_factor: int | None = None
    hnsw_m: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None

    def factory_string(self) -> str:
        """The `faiss.index_factory` description of the index."""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if self.kind == "ivfpq":
            pq = f"PQ{self.m}x4fs" if self.nbits == 4 else f"PQ{self.m}x{self.nbits}"
            refine = {"sq8": ",Refine(SQ8)", "flat": ",RFlat", None: ""}[self.refine]
            return f"IVF{self.nlist},{pq}{refine}"
        raise UsageError(f"unknown index kind {self.kind!r}: use one of {', '.join(KINDS)}")

    def describe(self) -> str:
        """One line: the factory string and the search-time parameters."""
        if self.kind == "ivfpq":
            return f"{self.factory_string()} nprobe={self.nprobe} k_factor={self.k_factor}"
        if self.kind == "hnsw":
            return f"{self.factory_string()} efConstruction={self.ef_construction} efSearch={self.ef_search}"
        return self.factory_string()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (inverse of `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexParams:
        """Rebuild from `to_dict()` output."""
        return cls(**data)


def _pow2_floor(value: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(value, 1.0)))))


def _pq_m(dim: int) -> int:
    """The number of PQ sub-quantisers: about one per 8 dimensions, dividing `dim` exactly."""
    target = max(1, dim // 8)
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


def auto_params(
    n: int,
    dim: int,
    kind: str = "auto",
    *,
    nlist: int | None = None,
    m: int | None = None,
    nbits: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int | None = None,
    ef_search: int | None = None,
) -> IndexParams:
    """Index parameters for `n` vectors of `dim`: the automatic choice, with any given value kept.

    `auto` is exact Flat up to FLAT_MAX_TILES vectors, IVF-PQ above. IVF-PQ: nlist = the power of two
    nearest to sqrt(n) (at most n / 39, FAISS's minimum of training points per cell), nprobe =
    max(8, nlist / 16), m = dim / 8 sub-quantisers of 4 bits (fast-scan), top 4k re-ranked with SQ8
    vectors. HNSW: 32 links, efConstruction 64, efSearch 64 (256 above FLAT_MAX_TILES vectors; at 1M
    clustered vectors HNSW then reaches recall@10 0.93 only, so `auto` never picks it).
    """
    if kind not in KINDS:
        raise UsageError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
    if n <= 0:
        raise StoreError("the store has no tiles: extract slides with `mvh extract` before building an index")
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX_TILES else "ivfpq"
    if kind == "flat":
        return IndexParams(kind="flat")
    if kind == "hnsw":
        return IndexParams(
            kind="hnsw",
            hnsw_m=hnsw_m or 32,
            ef_construction=64,
            ef_search=ef_search or (64 if n <= FLAT_MAX_TILES else 256),
        )
    max_cells = max(1, n // 39)
    if nlist is None:
        nlist = min(_pow2_floor(math.sqrt(n) * math.sqrt(2)), _pow2_floor(max_cells))
    if nlist > n:
        raise UsageError(f"--nlist {nlist} exceeds the {n} tiles of the store: choose at most {max_cells}")
    m = m or _pq_m(dim)
    if dim % m:
        raise UsageError(f"--m {m} must divide the embedding dimension {dim}")
    nbits = nbits or 4
    if nbits not in (4, 5, 6, 7, 8):
        raise UsageError(f"--nbits {nbits} is not supported: use 4 (fast-scan) to 8")
    nprobe = min(nlist, nprobe or max(8, nlist // 16))
    return IndexParams(kind="ivfpq", nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, refine="sq8", k_factor=4)


# ---------------------------------------------------------------------------- arrays
def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of `x` [N, D] scaled to unit L2 norm, as contiguous float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise UsageError(f"query embeddings must be a 2-d array [N, dim], got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no [N, D] temporary
    if np.all(np.abs(norms - 1) < 1e-6):
        return x  # already unit rows: no 3 GB copy for a million 768-d embeddings
    return np.ascontiguousarray(x / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


def exact_search(
    database: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine top-k in numpy: scores [Q, k] float32 and row ids [Q, k] (-1 past the end).

    `database` [N, D] and `queries` [Q, D] are normalised here; `allowed` [N] bool restricts the rows.
    Ties are broken by the lower row id.
    """
    db = l2_normalise(database)
    qs = l2_normalise(queries)
    n = db.shape[0]
    candidates = np.arange(n) if allowed is None else np.flatnonzero(np.asarray(allowed, dtype=bool))
    sub = db[candidates] if allowed is not None else db
    kk = min(k, candidates.size)
    scores = np.full((qs.shape[0], k), -np.inf, dtype=np.float32)
    ids = np.full((qs.shape[0], k), -1, dtype=np.int64)
    if kk == 0:
        return scores, ids
    chunk = max(1, _EXACT_BLOCK // max(sub.shape[0], 1))
    for start in range(0, qs.shape[0], chunk):
        sims = qs[start : start + chunk] @ sub.T
        if kk < sub.shape[0]:
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(sub.shape[0]), (sims.shape[0], sub.shape[0]))
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        top = np.take_along_axis(part, order, axis=1)
        scores[start : start + sims.shape[0], :kk] = np.take_along_axis(sims, top, axis=1)
        ids[start : start + sims.shape[0], :kk] = candidates[top]
    return scores, ids


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k & exact top-k| / |exact top-k| (ids [Q, >=k]; -1 = no row).

    The denominator is k unless fewer than k rows qualified for a query; queries with none are skipped.
    """
    found = []
    for a, e in zip(np.asarray(approx_ids)[:, :k], np.asarray(exact_ids)[:, :k], strict=True):
        truth = set(e.tolist()) - {-1}
        if truth:
            found.append(len(truth & set(a.tolist())) / len(truth))
    return float(np.mean(found)) if found else float("nan")


def build_faiss_index(
    embeddings: np.ndarray, params: IndexParams, seed: int = 0, use_gpu: bool | None = None
) -> faiss.Index:
    """A trained FAISS index over the L2-normalised `embeddings` [N, D] (row i gets id i), on CPU."""
    x = l2_normalise(embeddings)
    n, dim = x.shape
    index = faiss.index_factory(dim, params.factory_string(), faiss.METRIC_INNER_PRODUCT)
    if params.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = int(params.ef_construction or 40)
    target = _to_gpu(index) if _want_gpu(use_gpu) and params.kind == "flat" else index
    if params.kind == "ivfpq":
        train_n = min(n, max(64 * int(params.nlist or 1), 50_000))
        rows = np.sort(np.random.default_rng(seed).choice(n, size=train_n, replace=False))
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        gpu_quantizer = _to_gpu(faiss.IndexFlatIP(dim)) if _want_gpu(use_gpu) else None
        if gpu_quantizer is not None:
            ivf.clustering_index = gpu_quantizer  # k-means assignment on the GPU
        index.train(x[rows])
        if gpu_quantizer is not None:
            ivf.clustering_index = None
    target.add(x)
    return faiss.index_gpu_to_cpu(target) if target is not index else index


def _want_gpu(use_gpu: bool | None) -> bool:
    return (faiss.get_num_gpus() > 0) if use_gpu is None else bool(use_gpu and faiss.get_num_gpus() > 0)


def _to_gpu(index: faiss.Index) -> faiss.Index:
    """`index` cloned onto all GPUs (exact inner product; float32 storage, no float16 shortcuts)."""
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = False
    return faiss.index_cpu_to_all_gpus(index, co=options)


def _search_parameters(params: IndexParams, k: int, selector: Any) -> Any:
    """Per-call FAISS search parameters (selector, nprobe, efSearch, k_factor) for `index`."""
    if params.kind == "ivfpq":
        base = faiss.SearchParametersIVF(sel=selector, nprobe=int(params.nprobe or 1))
        if params.refine is None:
            return base
        return faiss.IndexRefineSearchParameters(k_factor=float(params.k_factor or 1), base_index_params=base)
    if params.kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=max(int(params.ef_search or 16), k))
    return faiss.SearchParameters(sel=selector)


# ---------------------------------------------------------------------------- the loaded index
@dataclass
class VectorIndex:
    """A FAISS index with its row table (row i -> tile) and build metadata."""

    index: faiss.Index
    rows: pd.DataFrame
    params: IndexParams
    meta: dict[str, Any] = field(default_factory=dict)
    gpu_index: faiss.Index | None = None

    @property
    def n(self) -> int:
        """Number of indexed tiles."""
        return int(self.index.ntotal)

    def search_ids(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores [Q, k] and row ids [Q, k] (-1 when fewer rows qualify) of the top-k rows per query.

        `allowed` [n] bool restricts the candidate rows (a FAISS ID selector on the CPU index).
        """
        if k < 1:
            raise UsageError(f"-k must be at least 1, got {k}")
        q = l2_normalise(queries)
        if q.shape[1] != self.index.d:
            raise UsageError(f"queries have dim {q.shape[1]} but the index holds dim {self.index.d}")
        if allowed is None and self.gpu_index is not None:
            scores, ids = self.gpu_index.search(q, k)
            return scores, ids.astype(np.int64)
        selector = None
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (self.n,):
                raise UsageError(f"allowed mask has shape {allowed.shape}, expected ({self.n},)")
            bitmap = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bitmap))
        # The selector borrows `bitmap`, which stays alive in this frame until the search returns.
        params = _search_parameters(self.params, k, selector)
        scores, ids = self.index.search(q, k, params=params)
        return scores, ids.astype(np.int64)

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
        """Search results as tile rows: query, rank, slide_id, tile_id, x, y, mpp, score."""
        q_idx, rank = np.nonzero(ids >= 0)
        rows = self.rows.iloc[ids[q_idx, rank]].reset_index(drop=True)
        frame = pd.DataFrame(
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
        return frame

    def slide_mask(self, slide_ids: Sequence[str]) -> np.ndarray:
        """Bool [n]: True for rows of the given slides."""
        return self.rows["slide_id"].isin(list(slide_ids)).to_numpy()


# ---------------------------------------------------------------------------- store state
def _slide_state(store: EmbeddingStore) -> dict[str, list[Any]]:
    """Per done slide: [n_tiles, commit timestamp]: what an index must agree with to be fresh."""
    done = store.slides(status=DONE)
    return {
        str(row.slide_id): [int(row.n_tiles), str(row.timestamp)]
        for row in done[["slide_id", "n_tiles", "timestamp"]].itertuples(index=False)
    }


def _read_meta(store: EmbeddingStore) -> dict[str, Any] | None:
    path = store.index_dir / META_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(
            f"index metadata {path} is unreadable ({exc}): rebuild with `mvh index build`"
        ) from exc
    if meta.get("format") != _FORMAT:
        raise StoreError(f"index {path} has format {meta.get('format')}: rebuild with `mvh index build`")
    return meta


def _stale_reason(meta: dict[str, Any], state: dict[str, list[Any]]) -> str | None:
    built = meta["slides"]
    added = sorted(set(state) - set(built))
    removed = sorted(set(built) - set(state))
    changed = sorted(s for s in set(state) & set(built) if state[s] != built[s])
    parts = []
    for what, ids in (("added", added), ("removed", removed), ("re-embedded", changed)):
        if ids:
            shown = ", ".join(ids[:3]) + (" ..." if len(ids) > 3 else "")
            parts.append(f"{len(ids)} slide(s) {what} ({shown})")
    return "; ".join(parts) or None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- build / load
@dataclass(frozen=True)
class BuildResult:
    """What `build_index` did."""

    params: IndexParams
    n_tiles: int
    n_added: int
    store_version: int
    seconds: float
    incremental: bool
    device: str
    path: Path
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        out["params"] = self.params.to_dict()
        out["path"] = str(self.path)
        out["notes"] = list(self.notes)
        out["description"] = self.params.describe()
        return out


def build_index(
    store: EmbeddingStore,
    kind: str = "auto",
    *,
    nlist: int | None = None,
    m: int | None = None,
    nbits: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int | None = None,
    ef_search: int | None = None,
    update: bool = False,
    seed: int = 0,
    use_gpu: bool | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Build (or with `update`, extend) the FAISS index of `store` and save it in `store.index_dir`.

    With `update`, the tiles of new slides are added to the existing Flat or IVF-PQ index (same ids,
    same trained quantisers); removed or re-embedded slides, and HNSW indexes, cause a full rebuild
    of the same kind, with a note saying why.
    """
    start = time.perf_counter()
    state = _slide_state(store)
    version = store.version
    notes: list[str] = []
    meta = _read_meta(store) if update else None
    if update and meta is None:
        notes.append("no index to update: built a new one")
    if meta is not None:
        reason = _stale_reason(meta, state)
        built_slides = meta["slides"]
        if reason is None:
            return _unchanged(store, meta, start)
        gone = [s for s in built_slides if s not in state or state[s] != built_slides[s]]
        old_kind = meta["params"]["kind"]
        if kind == "auto":
            kind = old_kind  # an update keeps the kind of the index it updates
        if kind != old_kind:
            notes.append(f"rebuilt as {kind}: the index was {old_kind}")
        elif old_kind == "hnsw":
            notes.append("HNSW indexes are rebuilt, not updated")
        elif gone:
            notes.append(f"rebuilt from scratch: {reason} (an update only adds slides)")
        else:
            return _extend(store, meta, state, version, start, progress)
    if progress:
        progress("reading embeddings", store.n_tiles)
    rows, emb = store.all_embeddings(columns=ROW_COLUMNS)
    params = auto_params(
        len(rows), store.dim, kind, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, hnsw_m=hnsw_m,
        ef_search=ef_search,
    )
    if progress:
        progress(f"building {params.describe()}", len(rows))
    index = build_faiss_index(emb, params, seed=seed, use_gpu=use_gpu)
    device = "gpu" if _want_gpu(use_gpu) and params.kind in ("flat", "ivfpq") else "cpu"
    path = _save(store, index, rows, params, state, version, previous=_read_meta(store))
    return BuildResult(
        params=params, n_tiles=len(rows), n_added=len(rows), store_version=version,
        seconds=time.perf_counter() - start, incremental=False, device=device, path=path, notes=tuple(notes),
    )


def _unchanged(store: EmbeddingStore, meta: dict[str, Any], start: float) -> BuildResult:
    return BuildResult(
        params=IndexParams.from_dict(meta["params"]), n_tiles=int(meta["n_tiles"]), n_added=0,
        store_version=int(meta["store_version"]), seconds=time.perf_counter() - start, incremental=True,
        device="cpu", path=store.index_dir, notes=("the index is up to date: nothing to add",),
    )


def _extend(
    store: EmbeddingStore,
    meta: dict[str, Any],
    state: dict[str, list[Any]],
    version: int,
    start: float,
    progress: Progress | None,
) -> BuildResult:
    """Add the tiles of slides that are new since the index was built (rows keep their ids)."""
    loaded = _load(store, meta)
    new_slides = sorted(set(state) - set(meta["slides"]))
    frames, arrays = [], []
    for slide_id in new_slides:
        if progress:
            progress(f"adding {slide_id}", state[slide_id][0])
        tiles = store.slide_tiles(slide_id)
        emb, coords = store.slide_embeddings(slide_id)
        if not np.array_equal(coords, tiles[["x", "y"]].to_numpy(np.int64)):
            raise StoreError(
                f"slide {slide_id} changed while being read from {store.uri}: run the update again"
            )
        frames.append(tiles[list(ROW_COLUMNS)])
        arrays.append(emb)
    added = np.concatenate(arrays) if arrays else np.empty((0, store.dim), np.float32)
    if len(added):
        loaded.index.add(l2_normalise(added))
    rows = pd.concat([loaded.rows, *frames], ignore_index=True)
    notes = [f"added {len(added)} tiles of {len(new_slides)} new slide(s)"]
    if loaded.params.kind == "ivfpq" and len(rows) > 4 * int(meta.get("trained_on", len(rows))):
        notes.append("the index now holds over 4x the tiles it was trained on: consider `mvh index build`")
    path = _save(store, loaded.index, rows, loaded.params, state, version, previous=meta,
                 trained_on=int(meta.get("trained_on", meta["n_tiles"])))
    return BuildResult(
        params=loaded.params, n_tiles=len(rows), n_added=len(added), store_version=version,
        seconds=time.perf_counter() - start, incremental=True, device="cpu", path=path, notes=tuple(notes),
    )


def _save(
    store: EmbeddingStore,
    index: faiss.Index,
    rows: pd.DataFrame,
    params: IndexParams,
    state: dict[str, list[Any]],
    version: int,
    previous: dict[str, Any] | None,
    trained_on: int | None = None,
) -> Path:
    folder = store.index_dir
    folder.mkdir(parents=True, exist_ok=True)
    build = uuid.uuid4().hex[:12]
    index_file, rows_file = f"tiles-{build}.faiss", f"tiles-{build}.parquet"
    faiss.write_index(index, str(folder / index_file))
    rows.reset_index(drop=True)[list(ROW_COLUMNS)].to_parquet(folder / rows_file, index=False)
    meta = {
        "format": _FORMAT,
        "params": params.to_dict(),
        "description": params.describe(),
        "dim": int(index.d),
        "n_tiles": int(len(rows)),
        "trained_on": int(trained_on if trained_on is not None else len(rows)),
        "store_uri": store.uri,
        "store_version": int(version),
        "fingerprint": store.fingerprint.to_dict(),
        "slides": state,
        "index_file": index_file,
        "rows_file": rows_file,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "faiss_version": faiss.__version__,
    }
    _write_atomic(folder / META_FILE, json.dumps(meta, indent=1))
    if previous is not None:
        for name in (previous.get("index_file"), previous.get("rows_file")):
            if name and name not in (index_file, rows_file):
                (folder / name).unlink(missing_ok=True)
    return folder


def _load(store: EmbeddingStore, meta: dict[str, Any]) -> VectorIndex:
    folder = store.index_dir
    try:
        index = faiss.read_index(str(folder / meta["index_file"]))
        # pyarrow directly: pandas' read_parquet path intermittently aborts the interpreter at exit
        # (pandas 2.3 + pyarrow 26, "terminate called without an active exception")
        rows = pq.read_table(folder / meta["rows_file"]).to_pandas()
    except (OSError, RuntimeError) as exc:
        raise StoreError(
            f"index files in {folder} are unreadable ({exc}): rebuild with `mvh index build`"
        ) from exc
    if index.ntotal != len(rows):
        raise StoreError(
            f"index in {folder} has {index.ntotal} vectors but {len(rows)} rows: run `mvh index build`"
        )
    return VectorIndex(index=index, rows=rows, params=IndexParams.from_dict(meta["params"]), meta=meta)


def load_index(store: EmbeddingStore, allow_stale: bool = False, use_gpu: bool | None = None) -> VectorIndex:
    """Load the store's index (IndexNotFoundError if none, StaleIndexError if the store has changed)."""
    meta = _read_meta(store)
    if meta is None:
        raise IndexNotFoundError(
            f"store {store.uri} has no vector index: build it with `mvh index build --store {store.uri}`"
        )
    reason = _stale_reason(meta, _slide_state(store))
    if reason is not None and not allow_stale:
        raise StaleIndexError(
            f"the index of {store.uri} is stale ({reason}): run `mvh index build --store {store.uri}` "
            "(add --update to add new slides only)"
        )
    loaded = _load(store, meta)
    if _want_gpu(use_gpu) and loaded.params.kind == "flat":
        loaded.gpu_index = _to_gpu(loaded.index)
    return loaded


def index_info(store: EmbeddingStore) -> dict[str, Any]:
    """A JSON-ready description of the store's index: parameters, size, files, freshness."""
    meta = _read_meta(store)
    if meta is None:
        return {"store": store.uri, "exists": False, "n_tiles_in_store": store.n_tiles}
    reason = _stale_reason(meta, _slide_state(store))
    folder = store.index_dir
    size = sum((folder / meta[key]).stat().st_size for key in ("index_file", "rows_file")
               if (folder / meta[key]).exists())
    return {
        "store": store.uri,
        "exists": True,
        "kind": meta["params"]["kind"],
        "description": meta["description"],
        "params": meta["params"],
        "n_tiles": meta["n_tiles"],
        "n_tiles_in_store": store.n_tiles,
        "n_slides": len(meta["slides"]),
        "built_from_version": meta["store_version"],
        "store_version": store.version,
        "stale": reason is not None,
        "stale_reason": reason,
        "built_at": meta["built_at"],
        "bytes": int(size),
        "path": str(folder),
    }


# ---------------------------------------------------------------------------- search
def search(
    store: EmbeddingStore,
    query_embeddings: np.ndarray,
    k: int = 10,
    exclude_slides: Sequence[str] | None = None,
    index: VectorIndex | None = None,
) -> pd.DataFrame:
    """Top-k tiles per query [Q, dim] as rows: query, rank, slide_id, tile_id, x, y, mpp, score (cosine)."""
    index = index if index is not None else load_index(store)
    queries = np.asarray(query_embeddings, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    allowed = ~index.slide_mask(exclude_slides) if exclude_slides else None
    scores, ids = index.search_ids(queries, k, allowed=allowed)
    return index.hits(scores, ids)


def search_slides(
    store: EmbeddingStore,
    query_embeddings: np.ndarray,
    k: int = 10,
    exclude_slides: Sequence[str] | None = None,
    index: VectorIndex | None = None,
    tiles_per_query: int | None = None,
) -> pd.DataFrame:
    """Slides ranked by similarity to a query made of one or more tiles [Q, dim] (see below).

    For each query tile q the index returns its K best tiles (K = `tiles_per_query`, default
    max(100, 10 k)). A target slide S gets best_q(S) = the best score among q's hits in S, or, when
    none of q's K hits is in S, q's K-th score (an upper bound of S's true best). The slide score is the
    mean of best_q(S) over the query tiles, so a slide ranks high when most query tiles find a close
    tile in it. Columns: rank, slide_id, score, n_hits (query tiles with a hit in S), n_query_tiles, and
    the best-scoring tile of S (tile_id, x, y, mpp, tile_score).
    """
    index = index if index is not None else load_index(store)
    queries = np.asarray(query_embeddings, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    big_k = min(index.n, tiles_per_query or max(100, 10 * k))
    hits = search(store, queries, k=big_k, exclude_slides=exclude_slides, index=index)
    columns = [
        "rank", "slide_id", "score", "n_hits", "n_query_tiles", "tile_id", "x", "y", "mpp", "tile_score",
    ]
    if hits.empty:
        return pd.DataFrame(columns=columns)
    floor = hits.groupby("query")["score"].min()
    best = hits.sort_values("score", ascending=False, kind="stable").drop_duplicates(["query", "slide_id"])
    table = best.pivot(index="query", columns="slide_id", values="score")
    table = table.reindex(range(queries.shape[0]))
    n_hits = table.notna().sum(axis=0)
    filled = table.apply(lambda col: col.fillna(floor.reindex(table.index)))
    slide_score = filled.mean(axis=0)
    top_tile = best.drop_duplicates("slide_id").set_index("slide_id")
    out = pd.DataFrame({"slide_id": slide_score.index, "score": slide_score.to_numpy(np.float64)})
    out["n_hits"] = n_hits.reindex(out["slide_id"]).to_numpy(np.int64)
    out["n_query_tiles"] = int(queries.shape[0])
    for col in ("tile_id", "x", "y", "mpp"):
        out[col] = top_tile.loc[out["slide_id"], col].to_numpy()
    out["tile_score"] = top_tile.loc[out["slide_id"], "score"].to_numpy(np.float64)
    out = out.sort_values(["score", "slide_id"], ascending=[False, True], kind="stable").head(k)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out[columns].reset_index(drop=True)
