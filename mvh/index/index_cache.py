"""FAISS indexes beside a store in object storage, and their local cache.

`mvh index build` on an object-store URI builds in a local folder and publishes the files beside the
tables (`_mvh/index/`): first the files the build adds (its FAISS file and new row parts; parts already
published by an earlier build are shared, not uploaded again), then `build-<id>.json`, then
`index.json` last, each build json carrying the sha256 of every file it names. A search downloads a
build once into `$MVH_CACHE_DIR` (default `~/.cache/mvh`) under a key of store URI + build id, so a
consumer with read-only credentials never writes into the producer's bucket. A cached copy whose files
no longer match their checksums is fetched again; a published build that does not match is refused.
Files move in 8 MiB blocks, never whole in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from mvh.core.files import sha256_file
from mvh.errors import StoreError
from mvh.store import EmbeddingStore
from mvh.store.location import StoreLocation, cache_root
from mvh.store.sidecar import SidecarFiles

META_FILE = "index.json"
AREA = "index"
INDEX_DIRNAME = "_index"
_BLOCK = 8 << 20


def build_folder() -> Path:
    """A fresh local folder to build the index of a remote store in, before publishing it."""
    folder = cache_root() / "builds" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


def store_key(uri: str) -> str:
    """A short stable key of a store URI for cache folder names."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def remote_names(location: StoreLocation) -> list[str]:
    """Names of the files published beside the store's tables."""
    remote = SidecarFiles(location, AREA)
    try:
        infos = remote.fs.get_file_info(pafs.FileSelector(remote.root, allow_not_found=True))
    except OSError as exc:
        said = location.redact(str(exc))
        raise StoreError(f"cannot list the index beside {location.describe()}: {said}") from exc
    return sorted(Path(info.path).name for info in infos if info.type == pafs.FileType.File)


def remote_json(location: StoreLocation, name: str) -> dict[str, Any] | None:
    """A published json file (None when absent; StoreError when unreadable)."""
    remote = SidecarFiles(location, AREA)
    if not remote.exists(name):
        return None
    try:
        return json.loads(remote.get(name))
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"the index metadata {name} beside {location.describe()} is unreadable: run `mvh index build`"
        ) from exc


def _upload(remote: SidecarFiles, path: Path) -> None:
    if isinstance(remote.fs, pafs.LocalFileSystem):
        remote.put(path.name, path.read_bytes())  # only the tests' local stand-in for a bucket
        return
    try:
        with remote.fs.open_output_stream(f"{remote.root}/{path.name}") as out, open(path, "rb") as src:
            while block := src.read(_BLOCK):
                out.write(block)
    except OSError as exc:
        said = remote.location.redact(str(exc))
        raise StoreError(f"cannot write {path.name} beside {remote.location.describe()}: {said}") from exc


def publish(
    location: StoreLocation, folder: Path, meta: dict[str, Any], keep: Iterable[str]
) -> dict[str, Any]:
    """Upload a build made in `folder` beside the store: new files, its build json, `index.json` last.

    Files no longer named by `keep` (the files of the builds to keep) are deleted afterwards.
    """
    remote = SidecarFiles(location, AREA)
    present = set(remote_names(location))
    sums = {}
    for name in meta["files"]:
        local = folder / name
        if name not in present:
            _upload(remote, local)
        sums[name] = meta.get("sha256", {}).get(name) or sha256_file(local)
    published = {**meta, "sha256": sums}
    text = json.dumps(published, indent=1).encode()
    remote.put(f"build-{meta['build']}.json", text)
    remote.put(META_FILE, text)
    wanted = set(keep) | set(meta["files"]) | {META_FILE}
    for name in present - wanted:
        remote.delete(name)
    return published


def _verified(folder: Path, meta: dict[str, Any]) -> bool:
    try:
        sums = meta["sha256"]
        return all(sha256_file(folder / name) == sums[name] for name in meta["files"])
    except (OSError, KeyError):
        return False


def fetch_build(location: StoreLocation, meta: dict[str, Any]) -> Path:
    """A local folder holding the published build `meta` names, fetched or refetched as needed."""
    if "sha256" not in meta:
        raise StoreError(f"the index beside {location.describe()} has no checksums: run `mvh index build`")
    folder = location.cache_dir(AREA) / f"v{meta['store_version']}-{meta['build']}"
    if folder.is_dir() and _verified(folder, meta):
        return folder
    remote = SidecarFiles(location, AREA)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    try:
        for name in meta["files"]:
            try:
                source = remote.fs.open_input_stream(f"{remote.root}/{name}")
                with source as src, open(tmp / name, "wb") as out:
                    while block := src.read(_BLOCK):
                        out.write(block)
            except OSError as exc:
                raise StoreError(
                    f"cannot read the index file {name} beside {location.describe()}: "
                    f"{location.redact(str(exc))}; run `mvh index build` again"
                ) from exc
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
    """The folder a store's indexes are read from: `<store>/_index` for a local store, else the local
    cache of its current published build (a folder that does not exist when none was published)."""
    local = store.location.local_path
    if local is not None:
        return local / INDEX_DIRNAME
    meta = remote_json(store.location, META_FILE)
    return fetch_build(store.location, meta) if meta is not None else cache_root() / AREA / "none"
