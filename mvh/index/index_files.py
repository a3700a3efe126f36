"""A store's FAISS index on disk: save, load, stale detection, description.

Inside `index_dir(store)`: `index.json` (kind, parameters, the store version and the per-slide state the
index was built from, file names) and, per build, `tiles-<build>.faiss` plus `tiles-<build>.parquet`
(row i of the index -> slide_id, tile_id, x, y, tile_px, mpp). `index.json` is replaced last and
atomically, so a reader never pairs an index with another build's rows.

Stale detection compares the store's done slides (id, tile count, commit time) with those recorded at
build time.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import faiss
import pandas as pd
import pyarrow.parquet as pq

from mvh.errors import IndexNotFoundError, StaleIndexError, StoreError, StoreWriteError
from mvh.index.faiss_index import ROW_COLUMNS, VectorIndex, to_gpu, want_gpu
from mvh.index.index_cache import build_folder, index_dir, publish_index
from mvh.index.params import IndexParams
from mvh.store import DONE, EmbeddingStore

META_FILE = "index.json"
FORMAT = 1


def slide_state(store: EmbeddingStore) -> dict[str, list[Any]]:
    """Per done slide: [n_tiles, commit timestamp]: what an index must agree with to be fresh."""
    done = store.slides(status=DONE)
    return {
        str(row.slide_id): [int(row.n_tiles), str(row.timestamp)]
        for row in done[["slide_id", "n_tiles", "timestamp"]].itertuples(index=False)
    }


def read_meta(store: EmbeddingStore) -> dict[str, Any] | None:
    """The store's `index.json` (None when no index was built; StoreError when unreadable)."""
    path = index_dir(store) / META_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(
            f"index metadata {path} is unreadable ({exc}): rebuild with `mvh index build`"
        ) from exc
    if meta.get("format") != FORMAT:
        raise StoreError(f"index {path} has format {meta.get('format')}: rebuild with `mvh index build`")
    return meta


def stale_reason(meta: dict[str, Any], state: dict[str, list[Any]]) -> str | None:
    """Why an index built with `meta` no longer matches the store state (None when it does)."""
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
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_build(folder: Path, index: faiss.Index, rows: pd.DataFrame, index_file: str, rows_file: str,
                 meta: dict[str, Any]) -> None:
    """Write a build's files, `index.json` last; on failure (a full disk) remove what this build wrote."""
    try:
        faiss.write_index(index, str(folder / index_file))
        rows.reset_index(drop=True)[list(ROW_COLUMNS)].to_parquet(folder / rows_file, index=False)
        _write_atomic(folder / META_FILE, json.dumps(meta, indent=1))
    except (OSError, RuntimeError) as exc:  # faiss reports a failed write as RuntimeError
        for name in (index_file, rows_file):
            (folder / name).unlink(missing_ok=True)
        cause = " ".join(str(exc).split())[-200:]
        raise StoreWriteError(
            f"cannot write the index into {folder} ({cause}): free space there and run `mvh index build` "
            "again; the previous index, if any, is unchanged"
        ) from exc


def save_index(
    store: EmbeddingStore,
    index: faiss.Index,
    rows: pd.DataFrame,
    params: IndexParams,
    state: dict[str, list[Any]],
    version: int,
    previous: dict[str, Any] | None,
    trained_on: int | None = None,
) -> Path:
    """Write a build's index and rows, then swap `index.json` to it and delete the previous build's files.

    A remote store's index is written to a local build folder, then published beside the tables
    (`mvh.index.index_cache`); readers fetch it into their own cache.
    """
    store.check_writable()
    remote = store.location.is_remote
    folder = build_folder() if remote else index_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    build = uuid.uuid4().hex[:12]
    index_file, rows_file = f"tiles-{build}.faiss", f"tiles-{build}.parquet"
    meta = {
        "format": FORMAT,
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
    _write_build(folder, index, rows, index_file, rows_file, meta)
    if remote:
        publish_index(store.location, folder)
        return folder
    if previous is not None:
        for name in (previous.get("index_file"), previous.get("rows_file")):
            if name and name not in (index_file, rows_file):
                (folder / name).unlink(missing_ok=True)
    return folder


def read_index(store: EmbeddingStore, meta: dict[str, Any]) -> VectorIndex:
    """The index files named by `meta` (StoreError when unreadable or inconsistent)."""
    folder = index_dir(store)
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
    meta = read_meta(store)
    if meta is None:
        raise IndexNotFoundError(
            f"store {store.uri} has no vector index: build it with `mvh index build --store {store.uri}`"
        )
    reason = stale_reason(meta, slide_state(store))
    if reason is not None and not allow_stale:
        raise StaleIndexError(
            f"the index of {store.uri} is stale ({reason}): run `mvh index build --store {store.uri}` "
            "(add --update to add new slides only)"
        )
    loaded = read_index(store, meta)
    if want_gpu(use_gpu) and loaded.params.kind == "flat":
        loaded.gpu_index = to_gpu(loaded.index)
    return loaded


def index_info(store: EmbeddingStore) -> dict[str, Any]:
    """A JSON-ready description of the store's index: parameters, size, files, freshness."""
    meta = read_meta(store)
    if meta is None:
        return {"store": store.uri, "exists": False, "n_tiles_in_store": store.n_tiles}
    reason = stale_reason(meta, slide_state(store))
    folder = index_dir(store)
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
