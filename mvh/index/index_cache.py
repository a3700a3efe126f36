"""A FAISS index beside a store in object storage, and its local cache.

`mvh index build` on an object-store URI builds in a local folder and publishes the files beside the
tables (`_mvh/index/`), `index.json` last and carrying the sha256 of every file. A search downloads them
once into `$MVH_CACHE_DIR` (default `~/.cache/mvh`) under a key of store URI + the store version the index
was built from + the index file's checksum, so a consumer with read-only credentials never writes into
the producer's bucket. A cached copy whose files no longer match their checksums is fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from mvh.errors import StoreError
from mvh.store import EmbeddingStore
from mvh.store.location import StoreLocation
from mvh.store.sidecar import SidecarFiles

META_FILE = "index.json"
AREA = "index"
INDEX_DIRNAME = "_index"


def cache_root() -> Path:
    """`$MVH_CACHE_DIR`, else `$XDG_CACHE_HOME/mvh`, else `~/.cache/mvh`."""
    if os.environ.get("MVH_CACHE_DIR"):
        return Path(os.environ["MVH_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "mvh"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_names(meta: dict) -> list[str]:
    return [meta["index_file"], meta["rows_file"]]


def build_folder() -> Path:
    """A fresh local folder to build the index of a remote store in, before publishing it."""
    folder = cache_root() / "builds" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


def publish_index(location: StoreLocation, folder: Path) -> dict:
    """Upload the index built in `folder` beside the store; `index.json` (with checksums) goes last."""
    meta = json.loads((folder / META_FILE).read_text())
    remote = SidecarFiles(location, AREA)
    old = json.loads(remote.get(META_FILE)) if remote.exists(META_FILE) else None
    checksums = {}
    for name in _file_names(meta):
        data = (folder / name).read_bytes()
        checksums[name] = _sha256(data)
        remote.put(name, data)
    meta["sha256"] = checksums
    remote.put(META_FILE, json.dumps(meta, indent=1).encode())
    if old is not None:
        for name in set(_file_names(old)) - set(_file_names(meta)):
            remote.delete(name)
    return meta


def remote_meta(location: StoreLocation) -> dict | None:
    """The published `index.json` of a remote store (None when no index was published)."""
    remote = SidecarFiles(location, AREA)
    if not remote.exists(META_FILE):
        return None
    try:
        return json.loads(remote.get(META_FILE))
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"the index metadata beside {location.describe()} is unreadable: run `mvh index build`"
        ) from exc


def _verified(folder: Path, meta: dict) -> bool:
    try:
        sums = meta["sha256"]
        return all(_sha256((folder / name).read_bytes()) == sums[name] for name in _file_names(meta))
    except (OSError, KeyError):
        return False


def cached_index(location: StoreLocation) -> Path | None:
    """A local folder holding the store's published index, fetched or refetched as needed (None: none)."""
    meta = remote_meta(location)
    if meta is None:
        return None
    if "sha256" not in meta:
        raise StoreError(f"the index beside {location.describe()} has no checksums: run `mvh index build`")
    key = _sha256(location.uri.encode())[:16]
    checksum = meta["sha256"][meta["index_file"]][:16]
    folder = cache_root() / "index" / key / f"v{meta['store_version']}-{checksum}"
    if folder.is_dir() and _verified(folder, meta):
        return folder
    remote = SidecarFiles(location, AREA)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    try:
        for name in _file_names(meta):
            (tmp / name).write_bytes(remote.get(name))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if not _verified(tmp, meta):
            raise StoreError(
                f"the index files beside {location.describe()} do not match their checksums: "
                "run `mvh index build` again"
            )
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def index_dir(store: EmbeddingStore) -> Path:
    """The folder the store's vector index is read from: inside a local store, or the local cache of the
    index published beside a remote store (fetched or refetched here; a folder that does not exist when
    none was published)."""
    local = store.location.local_path
    if local is not None:
        return local / INDEX_DIRNAME
    return cached_index(store.location) or cache_root() / "index" / "none"
