"""A store's FAISS indexes on disk: save, find the one that belongs to a store version, load, describe.

Inside the index folder (`<store>/_index/`, published beside the tables of an object-store store, or a
reader's private `--index-cache DIR`), per build: `tiles-<build>.faiss`, its row parts
(`mvh.index.row_parts`) and `build-<build>.json` (kind, parameters, the store version and per-slide
state it was built from, its files). `index.json` is a copy of the current build's json, replaced last
and atomically, so a reader never pairs an index with another build's rows, and a build killed midway
leaves the previous index in use.

An index belongs to the store state it was built from (its done slides: id, tile count, commit time).
A later build keeps every earlier build that a tag still names (`tag-<name>.json`, written by
`mvh tag create` when the current index is fresh, or a build whose store version is a tag's), so
`URI@tag` and `--store-version N` search with their own index; other builds' files are deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss

from mvh.errors import IndexNotFoundError, StaleIndexError, StoreError, StoreWriteError
from mvh.index.faiss_index import VectorIndex, to_gpu, want_gpu
from mvh.index.index_cache import (
    META_FILE,
    build_folder,
    fetch_build,
    index_dir,
    publish,
    remote_json,
    remote_names,
    store_key,
)
from mvh.index.params import IndexParams
from mvh.index.row_parts import PartSet, part_files
from mvh.store import DONE, EmbeddingStore

FORMAT = 2
_LEFTOVER_AGE_S = 3600.0  # files of a killed build are deleted by a later build once this old


def slide_state(store: EmbeddingStore) -> dict[str, list[Any]]:
    """Per done slide: [n_tiles, commit timestamp]: what an index must agree with to be fresh."""
    done = store.slides(status=DONE)
    return {
        str(row.slide_id): [int(row.n_tiles), str(row.timestamp)]
        for row in done[["slide_id", "n_tiles", "timestamp"]].itertuples(index=False)
    }


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


def _check_format(meta: dict[str, Any], where: str) -> dict[str, Any]:
    if meta.get("format") != FORMAT:
        raise StoreError(f"index {where} has format {meta.get('format')}: rebuild with `mvh index build`")
    return meta


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(
            f"index metadata {path} is unreadable ({exc}): rebuild with `mvh index build`"
        ) from exc


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class IndexFolder:
    """Where a store's builds are read from: a local folder, or the files published beside a remote store."""

    def __init__(self, store: EmbeddingStore, private: Path | None = None) -> None:
        self.store = store
        self.remote = private is None and store.location.is_remote
        self.path = private / store_key(store.uri) if private is not None else (
            None if self.remote else index_dir(store)
        )

    def json(self, name: str) -> dict[str, Any] | None:
        """A json file of the folder (None when absent)."""
        if self.remote:
            return remote_json(self.store.location, name)
        return _read_json(self.path / name)

    def names(self) -> list[str]:
        """File names in the folder."""
        if self.remote:
            return remote_names(self.store.location)
        return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []

    def current(self) -> dict[str, Any] | None:
        """The current build's json (`index.json`)."""
        meta = self.json(META_FILE)
        return None if meta is None else _check_format(meta, f"{self.describe()}/{META_FILE}")

    def builds(self) -> Iterator[dict[str, Any]]:
        """Every kept build's json."""
        for name in self.names():
            if name.startswith("build-") and name.endswith(".json"):
                meta = self.json(name)
                if meta is not None and meta.get("format") == FORMAT:
                    yield meta

    def tagged(self, tag: str) -> dict[str, Any] | None:
        """The build a tag file names (None when there is none)."""
        entry = self.json(f"tag-{tag}.json")
        return None if entry is None else self.json(f"build-{entry['build']}.json")

    def local_folder(self, meta: dict[str, Any]) -> Path:
        """A local folder holding the files of build `meta` (fetched into the cache for a remote store)."""
        return fetch_build(self.store.location, meta) if self.remote else self.path

    def describe(self) -> str:
        """Where the folder is, for messages."""
        return f"{self.store.location.describe()} (_mvh/index)" if self.remote else str(self.path)


def build_files(meta: dict[str, Any]) -> list[str]:
    """The files of a build: its FAISS file and its parts' files."""
    return [meta["index_file"], *[name for part in meta["parts"] for name in part_files(part["id"])]]


def writing_folder(store: EmbeddingStore, private: Path | None) -> Path:
    """The local folder a build writes into: the store's own, a private cache, or a staging folder."""
    if private is not None:
        folder = private / store_key(store.uri)
    else:
        store.check_writable()
        folder = build_folder() if store.location.is_remote else index_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _kept_builds(folder: IndexFolder, store: EmbeddingStore) -> list[dict[str, Any]]:
    """Earlier builds a tag still names (by tag file, or by the tag's slides-table version)."""
    tags = store.tags()
    tagged_versions = {int(v["slides"]) for v in tags.values()}
    kept = {}
    for tag in tags:
        meta = folder.tagged(tag)
        if meta is not None:
            kept[meta["build"]] = meta
    for meta in folder.builds():
        if int(meta["store_version"]) in tagged_versions:
            kept[meta["build"]] = meta
    return list(kept.values())


@contextmanager
def build_writes(folder: Path) -> Iterator[None]:
    """Around a build's writes into `folder`: a failed write (a full disk) leaves none of the files it
    made and is one StoreWriteError line; the current index stays as it was."""
    before = {p.name for p in folder.iterdir()}
    try:
        yield
    except (OSError, RuntimeError) as exc:  # faiss reports a failed write as RuntimeError
        for path in folder.iterdir():
            if path.name not in before:  # this build's parts, FAISS file or json (a build beside it
                path.unlink(missing_ok=True)  # in the same folder at that moment fails alike)
        cause = " ".join(str(exc).split())[-200:]
        raise StoreWriteError(
            f"cannot write the index into {folder} ({cause}): free space there and run `mvh index build` "
            "again; the current index, if any, is unchanged"
        ) from exc


def save_build(
    store: EmbeddingStore,
    path: Path,
    index: faiss.Index,
    parts: list[dict[str, Any]],
    params: IndexParams,
    state: dict[str, list[Any]],
    version: int,
    trained_on: int,
    private: Path | None = None,
) -> dict[str, Any]:
    """Write a build's FAISS file and json into `path` (which holds its parts), make it current, and
    delete the files of builds no tag names; a remote store's build is published beside the tables."""
    build = uuid.uuid4().hex[:12]
    index_file = f"tiles-{build}.faiss"
    faiss.write_index(index, str(path / index_file))
    meta = {
        "format": FORMAT, "build": build, "params": params.to_dict(), "description": params.describe(),
        "dim": int(index.d), "n_tiles": int(index.ntotal), "trained_on": int(trained_on),
        "store_uri": store.uri, "store_version": int(version), "table_versions": store.table_versions(),
        "fingerprint": store.fingerprint.to_dict(), "slides": state, "index_file": index_file,
        "parts": parts, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "faiss_version": faiss.__version__,
    }
    meta["files"] = build_files(meta)
    folder = IndexFolder(store, private)
    named = {name for m in folder.builds() for name in build_files(m)}
    kept = [] if private is not None else _kept_builds(folder, store)
    keep = {name for m in kept for name in [*build_files(m), f"build-{m['build']}.json"]}
    keep |= {name for name in folder.names() if name.startswith("tag-")}
    if folder.remote:
        published = publish(store.location, path, meta, keep | {f"build-{build}.json"})
        shutil.rmtree(path, ignore_errors=True)  # the staging folder: readers fetch into their cache
        return published
    text = json.dumps(meta, indent=1)
    _write_atomic(path / f"build-{build}.json", text)
    _write_atomic(path / META_FILE, text)
    if private is None:
        _prune(path, keep | set(meta["files"]) | {f"build-{build}.json", META_FILE}, named)
    return meta


def _prune(path: Path, keep: set[str], named: set[str]) -> None:
    """Delete index files no kept build names: earlier builds' (`named`) at once, unnamed leftovers of a
    killed build once an hour old (a build running beside this one is younger)."""
    for child in path.iterdir():
        if child.name in keep or child.name.startswith((".", "tag-")):
            continue
        old = time.time() - child.stat().st_mtime > _LEFTOVER_AGE_S
        if child.name in named or child.name.startswith("build-") or old:
            child.unlink(missing_ok=True)


def read_index(folder: Path, meta: dict[str, Any]) -> VectorIndex:
    """The build `meta` names, from local `folder` (StoreError when unreadable or inconsistent)."""
    try:
        index = faiss.read_index(str(folder / meta["index_file"]))
    except (OSError, RuntimeError) as exc:
        raise StoreError(
            f"index files in {folder} are unreadable ({exc}): rebuild with `mvh index build`"
        ) from exc
    rows = PartSet(folder, meta["parts"])
    if index.ntotal != rows.n:
        raise StoreError(
            f"index in {folder} has {index.ntotal} vectors but {rows.n} rows: run `mvh index build`"
        )
    return VectorIndex(index=index, rows=rows, params=IndexParams.from_dict(meta["params"]), meta=meta)


def find_build(
    store: EmbeddingStore, private: Path | None = None, state: dict[str, list[Any]] | None = None
) -> tuple[IndexFolder, dict[str, Any]] | None:
    """The folder and json of a build that belongs to the store as opened (tag, version or latest):
    the tag's own build, the current one, or any kept build of the same state; None when none fits."""
    state = slide_state(store) if state is None else state
    folders = [IndexFolder(store)] + ([IndexFolder(store, private)] if private is not None else [])
    for folder in folders:
        first = [folder.tagged(store.location.tag)] if store.location.tag else []
        others = folder.builds() if store.location.pinned or private else []
        for meta in [*first, folder.current(), *others]:
            if meta is not None and stale_reason(meta, state) is None:
                return folder, meta
    return None


def read_meta(store: EmbeddingStore) -> dict[str, Any] | None:
    """The current build's json of the store's own index folder (None when no index was built)."""
    return IndexFolder(store).current()


def load_index(
    store: EmbeddingStore,
    allow_stale: bool = False,
    use_gpu: bool | None = None,
    private: Path | None = None,
    exact_fallback: bool = True,
) -> VectorIndex:
    """The index that belongs to the store as opened (IndexNotFoundError if none, StaleIndexError if the
    latest index is older than the store); `private`: also look in that `--index-cache` folder.

    A read-only or pinned handle, which cannot build one, gets an exact search by a pass over the store
    instead (`mvh.index.store_scan`, its note in `meta["notes"]`) unless `exact_fallback` is False.
    """
    found = find_build(store, private)
    if found is None:
        meta = read_meta(store)
        if exact_fallback and (store.location.pinned or store.location.read_only):
            from mvh.index.store_scan import scan_index  # store_scan builds on this module's neighbours

            if meta is None or store.location.pinned:
                why = "no index was built for this store version"
            else:
                why = f"the index is stale ({stale_reason(meta, slide_state(store))})"
            return scan_index(store, f"{why} and {store.location.describe()} is opened read-only")
        if meta is None or store.location.pinned or not allow_stale:
            _raise_missing(store, meta)
        found = IndexFolder(store), meta
    folder, meta = found
    loaded = read_index(folder.local_folder(meta), meta)
    if want_gpu(use_gpu) and loaded.params.kind == "flat":
        loaded.gpu_index = to_gpu(loaded.index)
    return loaded


def _raise_missing(store: EmbeddingStore, meta: dict[str, Any] | None) -> None:
    where = store.location.describe()
    if store.location.pinned:
        raise IndexNotFoundError(
            f"no index was built for {where}: search it exactly (slower, no index needed), build a private "
            f"one with `mvh index build --store {where} --index-cache DIR`, or tag a version after its index "
            "is built"
        )
    if meta is None:
        raise IndexNotFoundError(
            f"store {store.uri} has no vector index: build it with `mvh index build --store {store.uri}`"
        )
    raise StaleIndexError(
        f"the index of {store.uri} is stale ({stale_reason(meta, slide_state(store))}): run `mvh index build "
        f"--store {store.uri}` (add --update to add new slides only)"
    )


def keep_index_for_tag(store: EmbeddingStore, tag: str) -> str | None:
    """Name the current index as tag `tag`'s own (kept by later builds); a note, or None when the store
    has no fresh index for the tag to keep."""
    folder = IndexFolder(store)
    meta = folder.current()
    if meta is None or stale_reason(meta, slide_state(store)) is not None:
        return None
    text = json.dumps({"build": meta["build"], "tag": tag})
    if folder.remote:
        from mvh.index.index_cache import AREA
        from mvh.store.sidecar import SidecarFiles

        SidecarFiles(store.location, AREA).put(f"tag-{tag}.json", text.encode())
    else:
        _write_atomic(folder.path / f"tag-{tag}.json", text)
    return f"the current index ({meta['description']}) is kept with tag {tag}"


def index_info(store: EmbeddingStore) -> dict[str, Any]:
    """A JSON-ready description of the store's current index: parameters, size, freshness."""
    meta = read_meta(store)
    if meta is None:
        return {"store": store.uri, "exists": False, "n_tiles_in_store": store.n_tiles}
    reason = stale_reason(meta, slide_state(store))
    folder = IndexFolder(store)
    size = 0
    if not folder.remote:
        size = sum((folder.path / n).stat().st_size for n in meta["files"] if (folder.path / n).exists())
    return {
        "store": store.uri, "exists": True, "kind": meta["params"]["kind"],
        "description": meta["description"],
        "params": meta["params"], "n_tiles": meta["n_tiles"], "n_tiles_in_store": store.n_tiles,
        "n_slides": len(meta["slides"]), "built_from_version": meta["store_version"],
        "store_version": store.version, "stale": reason is not None, "stale_reason": reason,
        "built_at": meta["built_at"], "bytes": int(size), "path": folder.describe(),
        "kept_builds": sorted(int(m["store_version"]) for m in folder.builds()),
    }
