"""The index build job: `run_index_build(IndexBuildConfig(...), progress=...) -> BuildResult`.

A build reads every done tile of the store in one scan (the store's reads refuse NaN/inf embeddings),
chooses the parameters (`mvh.index.params.auto_params`) and writes the index beside the store. With
`update`, the tiles of new slides are added to the existing Flat or IVF-PQ index (same ids, same trained
quantisers); removed or re-embedded slides, and HNSW indexes, cause a full rebuild of the same kind, with
a note.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvh.errors import StoreError
from mvh.index.exact import l2_normalise
from mvh.index.faiss_index import ROW_COLUMNS, build_faiss_index, want_gpu
from mvh.index.index_cache import index_dir
from mvh.index.index_files import read_index, read_meta, save_index, slide_state, stale_reason
from mvh.index.params import IndexParams, auto_params, check_params
from mvh.jobs import JobResult
from mvh.progress import STEPS, VECTORS, Event, Progress, report
from mvh.store import EmbeddingStore


@dataclass(frozen=True)
class IndexBuildConfig:
    """Settings of `mvh index build` (validated on construction: UsageError naming the flag)."""

    store: str
    kind: str = "auto"
    nlist: int | None = None
    m: int | None = None
    nbits: int | None = None
    nprobe: int | None = None
    hnsw_m: int | None = None
    ef_search: int | None = None
    update: bool = False
    seed: int = 0
    use_gpu: bool | None = None

    def __post_init__(self) -> None:
        check_params(self.kind, nlist=self.nlist, m=self.m, nbits=self.nbits, nprobe=self.nprobe,
                     hnsw_m=self.hnsw_m, ef_search=self.ef_search)


@dataclass(frozen=True)
class BuildResult(JobResult):
    """What a build did (results JSON of `mvh index build --json`)."""

    params: IndexParams
    description: str
    n_tiles: int
    n_added: int
    store_version: int
    seconds: float
    incremental: bool
    device: str
    path: Path
    notes: list[str] = field(default_factory=list)


def run_index_build(cfg: IndexBuildConfig, *, progress: Progress | None = None) -> BuildResult:
    """Open the config's store and build (or update) its index."""
    return build_index(
        EmbeddingStore.open(cfg.store), cfg.kind, nlist=cfg.nlist, m=cfg.m, nbits=cfg.nbits,
        nprobe=cfg.nprobe, hnsw_m=cfg.hnsw_m, ef_search=cfg.ef_search, update=cfg.update, seed=cfg.seed,
        use_gpu=cfg.use_gpu, progress=progress,
    )


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
    """Build (or with `update`, extend) the FAISS index of an open `store`, saved in `index_dir(store)`."""
    check_params(kind, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef_search)
    start = time.perf_counter()
    state = slide_state(store)
    version = store.version
    notes: list[str] = []
    meta = read_meta(store) if update else None
    if update and meta is None:
        notes.append("no index to update: built a new one")
    if meta is not None:
        reason = stale_reason(meta, state)
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
    report(progress, Event.STATUS, STEPS, 0, "reading embeddings")
    rows, emb = store.all_embeddings(columns=ROW_COLUMNS)  # the store refuses NaN/inf (StoreDamagedError)
    params = auto_params(
        len(rows), store.dim, kind, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, hnsw_m=hnsw_m,
        ef_search=ef_search,
    )
    report(progress, Event.TOTAL, VECTORS, len(rows))
    report(progress, Event.STATUS, VECTORS, 0, f"building {params.describe()}")
    index = build_faiss_index(emb, params, seed=seed, use_gpu=use_gpu)
    report(progress, Event.ADVANCE, VECTORS, len(rows))
    device = "gpu" if want_gpu(use_gpu) and params.kind in ("flat", "ivfpq") else "cpu"
    path = save_index(store, index, rows, params, state, version, previous=read_meta(store))
    return BuildResult(
        params=params, description=params.describe(), n_tiles=len(rows), n_added=len(rows),
        store_version=version, seconds=time.perf_counter() - start, incremental=False, device=device,
        path=path, notes=notes,
    )


def _unchanged(store: EmbeddingStore, meta: dict[str, Any], start: float) -> BuildResult:
    params = IndexParams.from_dict(meta["params"])
    return BuildResult(
        params=params, description=params.describe(), n_tiles=int(meta["n_tiles"]), n_added=0,
        store_version=int(meta["store_version"]), seconds=time.perf_counter() - start, incremental=True,
        device="cpu", path=index_dir(store), notes=["the index is up to date: nothing to add"],
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
    loaded = read_index(store, meta)
    new_slides = sorted(set(state) - set(meta["slides"]))
    report(progress, Event.TOTAL, VECTORS, sum(state[s][0] for s in new_slides))
    frames, arrays = [], []
    for slide_id in new_slides:
        report(progress, Event.STATUS, VECTORS, 0, f"adding {slide_id}")
        tiles = store.slide_tiles(slide_id)
        emb, coords = store.slide_embeddings(slide_id)
        if not np.array_equal(coords, tiles[["x", "y"]].to_numpy(np.int64)):
            raise StoreError(
                f"slide {slide_id} changed while being read from {store.uri}: run the update again"
            )
        frames.append(tiles[list(ROW_COLUMNS)])
        arrays.append(emb)
        report(progress, Event.ADVANCE, VECTORS, len(emb))
    added = np.concatenate(arrays) if arrays else np.empty((0, store.dim), np.float32)
    if len(added):
        loaded.index.add(l2_normalise(added))
    rows = pd.concat([loaded.rows, *frames], ignore_index=True)
    notes = [f"added {len(added)} tiles of {len(new_slides)} new slide(s)"]
    if loaded.params.kind == "ivfpq" and len(rows) > 4 * int(meta.get("trained_on", len(rows))):
        notes.append("the index now holds over 4x the tiles it was trained on: consider `mvh index build`")
    path = save_index(store, loaded.index, rows, loaded.params, state, version, previous=meta,
                      trained_on=int(meta.get("trained_on", meta["n_tiles"])))
    return BuildResult(
        params=loaded.params, description=loaded.params.describe(), n_tiles=len(rows), n_added=len(added),
        store_version=version, seconds=time.perf_counter() - start, incremental=True, device="cpu",
        path=path, notes=notes,
    )
