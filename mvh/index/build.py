"""The index build job: `run_index_build(IndexBuildConfig(...), progress=...) -> BuildResult`.

A build streams the store (`mvh.index.shards`): it chooses the parameters from the done slides' tile
counts (`mvh.index.params.auto_params`), trains an IVF-PQ quantiser once on a bounded sample, then adds
shards of slides in batches, on this process or on Ray workers (`--ray-address`, `mvh.index.ray_build`),
and writes the index beside the store (`mvh.index.index_files`). No step holds more than one batch of
embeddings besides the training sample and the index itself. With `update`, the tiles of new slides are
added as one more shard to the existing Flat or IVF-PQ index (same ids, same trained quantisers);
removed or re-embedded slides, and HNSW indexes, cause a full rebuild of the same kind, with a note.
`index_cache` builds a reader's private index of the store as opened (a tag or version) into a local
folder, never writing to the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss

from mvh.errors import UsageError
from mvh.index.faiss_index import empty_index, train_index, training_rows, want_gpu
from mvh.index.index_files import (
    IndexFolder,
    build_writes,
    find_build,
    read_index,
    save_build,
    slide_state,
    stale_reason,
    writing_folder,
)
from mvh.index.params import IndexParams, auto_params, check_params
from mvh.index.shards import SHARD_TILES, add_shard, plan_shards, training_sample
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
    ray_address: str | None = None
    index_cache: str | None = None
    shard_tiles: int = SHARD_TILES

    def __post_init__(self) -> None:
        check_params(self.kind, nlist=self.nlist, m=self.m, nbits=self.nbits, nprobe=self.nprobe,
                     hnsw_m=self.hnsw_m, ef_search=self.ef_search)
        if self.shard_tiles < 1:
            raise UsageError(f"--shard-tiles {self.shard_tiles} must be a positive number of tiles")
        if self.ray_address is not None and self.kind == "hnsw":
            raise UsageError("--ray-address builds Flat or IVF-PQ indexes (HNSW graphs cannot be merged): "
                             "drop --kind hnsw or --ray-address")


@dataclass(frozen=True)
class BuildResult(JobResult, job="index_build"):
    """What a build did (results JSON of `mvh index build --json`)."""

    params: IndexParams
    description: str
    n_tiles: int
    n_added: int
    store_version: int
    seconds: float
    incremental: bool
    device: str
    path: str
    n_shards: int = 1
    notes: list[str] = field(default_factory=list)


def run_index_build(cfg: IndexBuildConfig, *, progress: Progress | None = None) -> BuildResult:
    """Open the config's store and build (or update) its index."""
    return build_index(
        EmbeddingStore.open(cfg.store), cfg.kind, nlist=cfg.nlist, m=cfg.m, nbits=cfg.nbits,
        nprobe=cfg.nprobe, hnsw_m=cfg.hnsw_m, ef_search=cfg.ef_search, update=cfg.update, seed=cfg.seed,
        use_gpu=cfg.use_gpu, progress=progress, ray_address=cfg.ray_address,
        index_cache=None if cfg.index_cache is None else Path(cfg.index_cache), shard_tiles=cfg.shard_tiles,
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
    ray_address: str | None = None,
    index_cache: Path | None = None,
    shard_tiles: int = SHARD_TILES,
) -> BuildResult:
    """Build (or with `update`, extend) the FAISS index of an open `store`, saved beside it (or in the
    private `index_cache` folder)."""
    check_params(kind, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef_search)
    start = time.perf_counter()
    state = slide_state(store)
    version = store.version
    notes: list[str] = []
    folder = writing_folder(store, index_cache)
    found = find_build(store, index_cache, state) if update else None
    meta = found[1] if found is not None else (IndexFolder(store, index_cache).current() if update else None)
    if update and meta is None:
        notes.append("no index to update: built a new one")
    if meta is not None:
        reason = stale_reason(meta, state)
        built_slides = meta["slides"]
        if reason is None:
            return _unchanged(meta, start, folder)
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
            return _extend(store, meta, state, version, start, folder, index_cache, progress)
    n = sum(int(v[0]) for v in state.values())
    params = auto_params(
        n, store.dim, kind, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef_search,
    )
    index = empty_index(params, store.dim)
    trained_on = n
    if params.kind == "ivfpq":
        report(progress, Event.STATUS, STEPS, 0, "sampling tiles to train the quantiser")
        sample = training_sample(store, state, training_rows(n, params), seed)
        trained_on = len(sample)
        report(progress, Event.STATUS, STEPS, 0, f"training {params.describe()} on {len(sample)} tiles")
        train_index(index, sample, params, seed=seed)
        del sample
    shards = plan_shards(state, shard_tiles)
    report(progress, Event.TOTAL, VECTORS, n)
    report(progress, Event.STATUS, VECTORS, 0, f"adding {n} tiles in {len(shards)} shard(s)")
    with build_writes(folder):
        if ray_address is not None:
            from mvh.index.ray_build import add_shards_on_ray

            parts = add_shards_on_ray(ray_address, store, index, shards, folder, progress)
        else:
            advance = lambda b: report(progress, Event.ADVANCE, VECTORS, b)  # noqa: E731
            parts = [add_shard(store, index, shard, folder, advance) for shard in shards]
        saved = save_build(
            store, folder, index, parts, params, state, version, trained_on, private=index_cache
        )
    device = "gpu" if want_gpu(use_gpu) and params.kind == "ivfpq" else "cpu"
    return BuildResult(
        params=params, description=params.describe(), n_tiles=n, n_added=n, store_version=version,
        seconds=time.perf_counter() - start, incremental=False, device=device, path=str(folder),
        n_shards=len(shards), notes=notes + _built_notes(store, saved, index_cache),
    )


def _built_notes(store: EmbeddingStore, meta: dict[str, Any], index_cache: Path | None) -> list[str]:
    if index_cache is not None:
        return [f"a private index of {store.location.describe()} in {index_cache}: search with "
                f"--index-cache {index_cache}; nothing was written to the store"]
    return []


def _unchanged(meta: dict[str, Any], start: float, folder: Path) -> BuildResult:
    params = IndexParams.from_dict(meta["params"])
    return BuildResult(
        params=params, description=params.describe(), n_tiles=int(meta["n_tiles"]), n_added=0,
        store_version=int(meta["store_version"]), seconds=time.perf_counter() - start, incremental=True,
        device="cpu", path=str(folder), n_shards=len(meta["parts"]),
        notes=["the index is up to date: nothing to add"],
    )


def _extend(
    store: EmbeddingStore,
    meta: dict[str, Any],
    state: dict[str, list[Any]],
    version: int,
    start: float,
    folder: Path,
    index_cache: Path | None,
    progress: Progress | None,
) -> BuildResult:
    """Add the tiles of slides that are new since the index was built, as one more shard (rows keep
    their ids; the earlier parts are shared with the earlier build, not copied)."""
    source = IndexFolder(store, index_cache) if index_cache is not None else IndexFolder(store)
    index = faiss.clone_index(read_index(source.local_folder(meta), meta).index)
    new_slides = {s: state[s] for s in sorted(set(state) - set(meta["slides"]))}
    shards = plan_shards(new_slides, shard_tiles=max(1, sum(int(v[0]) for v in new_slides.values())))
    report(progress, Event.TOTAL, VECTORS, sum(int(v[0]) for v in new_slides.values()))
    parts = list(meta["parts"])
    if source.remote:
        for name in meta["files"]:  # the shared parts travel with the new build
            if not (folder / name).exists():
                (folder / name).hardlink_to(source.local_folder(meta) / name)
    with build_writes(folder):
        for shard in shards:
            report(progress, Event.STATUS, VECTORS, 0, f"adding {len(shard.slides)} new slide(s)")
            advance = lambda b: report(progress, Event.ADVANCE, VECTORS, b)  # noqa: E731
            parts.append(add_shard(store, index, shard, folder, advance))
    added = int(index.ntotal) - int(meta["n_tiles"])
    notes = [f"added {added} tiles of {len(new_slides)} new slide(s)"]
    params = IndexParams.from_dict(meta["params"])
    trained_on = int(meta.get("trained_on", meta["n_tiles"]))
    if params.kind == "ivfpq" and index.ntotal > 4 * trained_on:
        notes.append("the index now holds over 4x the tiles it was trained on: consider `mvh index build`")
    with build_writes(folder):
        save_build(store, folder, index, parts, params, state, version, trained_on, private=index_cache)
    return BuildResult(
        params=params, description=params.describe(), n_tiles=int(index.ntotal), n_added=added,
        store_version=version, seconds=time.perf_counter() - start, incremental=True, device="cpu",
        path=str(folder), n_shards=len(shards), notes=notes,
    )
