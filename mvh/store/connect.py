"""Opening and creating a store: connecting to its location, its tables, its meta, and the write probe.

A store is three Lance tables; `meta` is written last on creation, so a location without it is not a
store: an empty leftover of an interrupted creation is cleaned up, tables holding data without `meta` are
refused as damaged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa

from mvh import __version__
from mvh.errors import StoreDamagedError, StoreError, StoreUnusableError
from mvh.store.card import card_of
from mvh.store.location import StoreLocation
from mvh.store.remote_errors import remote_failure
from mvh.store.schema import META, META_SCHEMA, SLIDES, SLIDES_SCHEMA, TILES, StoreFingerprint, tiles_schema
from mvh.store.sidecar import SidecarFiles
from mvh.store.tables import LANCE_ERRORS, StoreTables, is_damage, reason
from mvh.store.versions import snapshot_versions
from mvh.store.visibility import Visibility
from mvh.store.writer import now

# Lance caches, each per connection: metadata (manifests, file metadata) and indexes (the slide_id and
# commit B-trees). Lance's defaults are 1 GB and 6 GB; a writer caches every version it commits, so a
# process writing 666 slides held 907 MB of heap (a 300-slide test: 245 MB, 154 MB with a 32 MB cap).
LANCE_CACHE_BYTES = 256 << 20


class CreationRace(Exception):
    """Another process seems to be creating the same store right now (open_or_create waits and retries)."""


def connect(location: StoreLocation, cache_bytes: int = LANCE_CACHE_BYTES) -> Any:
    """A LanceDB connection to `location` (StoreUnusableError when a local path is a regular file), whose
    Lance metadata and index caches hold at most `cache_bytes` each."""
    local = location.local_path
    if local is not None and local.exists() and not local.is_dir():
        raise StoreUnusableError(
            f"--store {location.uri} is a regular file, not a store directory: give a folder path (new or "
            "existing)"
        )
    # Writers and readers of the latest version: consistency interval 0, every read sees commits made by
    # other processes. A frozen handle reads one version: no re-check per read (on object storage each
    # re-check is a round trip).
    interval = None if location.read_only or location.pinned else timedelta(0)
    session = lancedb.Session(index_cache_size_bytes=cache_bytes, metadata_cache_size_bytes=cache_bytes)
    try:
        return lancedb.connect(
            location.uri,
            storage_options=location.storage_options or None,
            read_consistency_interval=interval,
            session=session,
        )
    except LANCE_ERRORS as exc:  # LanceDB lists the store's namespace on connect: S3 answers here first
        raise remote_failure(exc, location) or exc from exc


def table_names(db: Any, location: StoreLocation) -> set[str]:
    """Names of the tables at `location` (StoreUnusableError when they cannot be listed)."""
    names: set[str] = set()
    token = None
    while True:
        try:
            page = db.list_tables(page_token=token)
        except LANCE_ERRORS as exc:
            remote = remote_failure(exc, location)
            if remote is not None:
                raise remote from exc
            raise StoreUnusableError(
                f"cannot list the tables of {location.describe()} ({location.redact(reason(exc))}): check "
                "the URI, the credentials (AWS_* variables or --storage-option) and the endpoint"
            ) from exc
        names.update(page.tables)
        token = page.page_token
        if not token:
            return names


def store_exists(location: StoreLocation) -> bool:
    """True when a complete store (with its `meta` table) is at `location`."""
    local = location.local_path
    if local is not None and not local.exists():
        return False
    return META in table_names(connect(location), location)


def _holds_no_data(table_dir: Path) -> bool:
    """True when a Lance table folder has no data files (an empty or interrupted creation)."""
    data = table_dir / "data"
    return not data.exists() or not any(p.is_file() for p in data.rglob("*"))


def check_no_stray_tables(location: StoreLocation, db: Any, read_only: bool = False) -> str | None:
    """Refuse tables without meta; remove an empty interrupted creation (returns a note then)."""
    uri = location.uri
    stray = sorted(table_names(db, location) & {TILES, SLIDES})
    if not stray:
        return None
    local = location.local_path
    if local is not None and all(_holds_no_data(local / f"{name}.lance") for name in stray):
        if read_only:  # an interrupted creation: no store here, and a reader removes nothing
            return None
        # Left by a run killed while creating the store: empty tables, no meta. Nothing to lose.
        for name in stray:
            shutil.rmtree(local / f"{name}.lance")
        return f"store {uri}: removed the empty tables {stray} left by an interrupted creation"
    raise StoreUnusableError(
        f"store {uri} holds tables {stray} but no meta table, so the model that made its embeddings is "
        "unknown: it is damaged. Restore its meta.lance from a copy of the store, or delete the folder "
        "and re-extract"
    )


def read_meta(db: Any, location: StoreLocation) -> dict[str, Any]:
    """The meta table of an existing store as key -> value, at the snapshot `location` names."""
    uri = location.uri
    try:
        table = db.open_table(META)
        if location.pinned:
            tables = {TILES: db.open_table(TILES), SLIDES: db.open_table(SLIDES), META: table}
            table.checkout(
                snapshot_versions(tables, tag=location.tag, version=location.version, where=uri)[META]
            )
        meta = {row["key"]: json.loads(row["value"]) for row in table.to_arrow().to_pylist()}
    except Exception as exc:  # noqa: BLE001 (is_damage lets through all but damage)
        if not is_damage(exc):
            raise
        raise remote_failure(exc, location) or StoreDamagedError(
            f"store {uri} is damaged: its meta table cannot be read ({reason(exc)}); restore "
            f"{uri}/meta.lance from a copy of the store, or re-extract into a new --store"
        ) from exc
    if "fingerprint" not in meta:
        raise StoreDamagedError(
            f"store {uri} is damaged: its meta table has no fingerprint; restore it from a copy, or "
            "re-extract into a new --store"
        )
    return meta


def open_tables(db: Any, location: StoreLocation) -> tuple[StoreTables, Visibility]:
    """The three tables, checked out at the snapshot `location` names, and the store's visibility rule
    (StoreDamagedError when they cannot be read)."""
    try:
        tables = StoreTables(db.open_table(TILES), db.open_table(SLIDES), db.open_table(META))
        if location.pinned:
            by_name = tables.by_name()
            pinned = snapshot_versions(
                by_name, tag=location.tag, version=location.version, where=location.uri
            )
            for name, table in by_name.items():
                table.checkout(pinned[name])
        rule = Visibility.choose(tables, location)  # reads both schemas: a damaged table fails here
    except Exception as exc:  # noqa: BLE001 (is_damage lets through all but damage)
        if not is_damage(exc):
            raise
        raise remote_failure(exc, location) or StoreDamagedError(
            f"store {location.uri} is damaged: its tiles/slides tables cannot be read ({reason(exc)}); "
            "restore the store from a copy, or re-extract into a new --store"
        ) from exc
    return tables, rule


def create_tables(
    location: StoreLocation, db: Any, fingerprint: StoreFingerprint, racing: bool
) -> tuple[dict[str, Any] | None, str | None]:
    """Create the tables of a new store, meta last: (meta, note), or (None, None) when another process
    created the meta table first (the caller opens that store).

    `racing`: tables that appear, or a failed creation, may be another creator at work: CreationRace.
    """
    uri = location.uri
    if racing and table_names(db, location) & {TILES, SLIDES}:
        raise CreationRace(uri)
    try:
        # racing: no tables a moment ago; any that appear now are the other creator's (exist_ok below)
        cleaned = None if racing else check_no_stray_tables(location, db)
        schema = tiles_schema(fingerprint.embed_dim, fingerprint.embedding_dtype)
        db.create_table(TILES, data=schema.empty_table(), exist_ok=True)
        slides = db.create_table(SLIDES, data=SLIDES_SCHEMA.empty_table(), exist_ok=True)
    except LANCE_ERRORS as exc:
        if racing:
            raise CreationRace(uri) from exc
        raise StoreUnusableError(
            f"cannot create the store at {uri} ({reason(exc)}): choose a writable --store path"
        ) from exc
    meta = {"fingerprint": fingerprint.to_dict(), "mvh_version": __version__, "created": now().isoformat()}
    # The dataset card exists from the start (`mvh card` edits it), written with the meta table at once.
    empty = SLIDES_SCHEMA.empty_table().to_pandas()  # no slides yet: the new store's first card
    meta["card"] = card_of(location, slides.version, fingerprint, empty, meta).to_dict()
    rows = pa.table({"key": list(meta), "value": [json.dumps(v) for v in meta.values()]}, schema=META_SCHEMA)
    try:
        db.create_table(META, data=rows)
    except LANCE_ERRORS as exc:
        if META not in table_names(db, location):
            raise StoreUnusableError(
                f"cannot create the store at {uri}: {location.redact(reason(exc))}"
            ) from exc
        return None, None
    return meta, cleaned


def probe_writable(location: StoreLocation) -> None:
    """Raise StoreUnusableError unless this process can write at `location` (a probe write)."""
    local = location.local_path
    if local is None:
        probe = SidecarFiles(location, "probe")
        name = f"write-{uuid.uuid4().hex}"
        try:
            probe.put(name, b"mvh write probe")
            probe.delete(name)
        except StoreError as exc:
            raise StoreUnusableError(
                f"store {location.uri} is not writable with these credentials ({exc}): give credentials "
                "that can write, or read it with --read-only"
            ) from exc
        return
    for folder in (local, local / f"{TILES}.lance", local / f"{SLIDES}.lance"):
        try:
            fd, path = tempfile.mkstemp(prefix=".mvh-write-probe-", dir=folder)
            os.close(fd)
            os.unlink(path)
        except OSError as exc:
            raise StoreUnusableError(
                f"store {location.uri} is not writable ({reason(exc)}): fix its permissions or mount, or "
                "choose another --store"
            ) from exc
