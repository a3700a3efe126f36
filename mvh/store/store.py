"""The embedding store: one LanceDB database (a directory or any URI `lancedb.connect` accepts).

Layout (three tables):

- `tiles`: one row per embedded tile (slide_id, tile_id, x, y at level 0, tile_px, mpp, tissue_fraction,
  model, weights_sha256, commit, embedding fixed_size_list<float32|float16>[dim]).
- `slides`: one row per slide (path, size, file_hash, level-0 dims, mpp and its source, status done|failed,
  error, n_tiles, seconds, model, weights, mvh_version, timestamp, commit, checksum, attrs).
- `meta`: key/value rows (JSON values): `fingerprint` (model name + config, preprocessing, weights sha256,
  dim, dtype), `mvh_version` and `created` of the store. It is written last on creation, so a directory
  without it is not a store: an empty leftover of an interrupted creation is cleaned up, tables holding
  data without `meta` are refused as damaged.

Commit protocol (idempotent per slide, safe with concurrent writers): a slide's tiles are appended in ONE
Lance commit under a fresh commit id, then ONE upsert of its slides row (status done, that commit id, the
checksum of its embedding bytes) switches readers to them. Readers only see tiles whose commit id is the
one named by the slide's row, so a crash, a lost race between two writers of one slide, or a failed
re-embedding (`--overwrite`) leaves only invisible rows behind and the old tiles stay readable until the
new ones are committed. Lance does not detect two concurrent inserts of one key, so two racing upserts can
leave two rows for a slide: readers keep the latest. Tiles of a superseded commit are deleted after the
switch; invisible leftovers older than an hour are deleted by the next commit of their slide.

Reads that hand embeddings on check that every value is finite and that each slide has the tiles its row
counts (`StoreDamagedError` otherwise); `mvh.store.integrity.verify_store` re-computes the checksums. A
read-only or pinned handle reads a slide by its row ids (`mvh.store.slide_rows`: one object GET or a few
instead of a filtered scan's dozen on S3); a writable handle filters on slide_id and commit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import BTree

from mvh import __version__
from mvh.errors import (
    FingerprintMismatchError,
    StoreDamagedError,
    StoreError,
    StoreNotFoundError,
    StoreUnusableError,
    StoreWriteError,
)
from mvh.store.location import StoreLocation, parse_location
from mvh.store.slide_rows import SlideRows
from mvh.store.versions import create_tag, delete_tag, list_tags, snapshot_versions, table_versions

log = logging.getLogger(__name__)

TILES = "tiles"
SLIDES = "slides"
META = "meta"
RANDOM_INIT = "random-init"
DONE = "done"
FAILED = "failed"
_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
_TILE_INPUT_COLUMNS = ("tile_id", "x", "y", "tile_px", "mpp", "tissue_fraction")
_COMMIT_RETRIES = 8
_READ_RETRIES = 5
_ORPHAN_AGE_S = 3600.0
_LANCE_ERRORS = (OSError, RuntimeError, ValueError)
# Reading a damaged Lance file can also panic in Rust, surfacing as a bare `Exception` subclass (RustPanic).
_DAMAGED_READ_ERRORS = (Exception,)
T = TypeVar("T")


def _json_normalise(value: Any) -> Any:
    """Return `value` as it comes back from a JSON round trip (tuples -> lists, keys -> str)."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class StoreFingerprint:
    """What a store's embeddings were made with; `.key()` must match for extraction into the store."""

    model: str
    model_config: dict[str, Any]
    weights_sha256: str
    weights_path: str | None
    embed_dim: int
    tile_px: int
    mpp: float
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    embedding_dtype: str = "float32"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embedding_dtype not in _DTYPES:
            raise StoreError(
                f"embedding dtype {self.embedding_dtype!r} is not supported: use float32 or float16"
            )
        object.__setattr__(self, "model_config", _json_normalise(dict(self.model_config)))
        object.__setattr__(self, "extra", _json_normalise(dict(self.extra)))
        for name in ("mean", "std"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else tuple(float(v) for v in value))
        object.__setattr__(self, "embed_dim", int(self.embed_dim))
        object.__setattr__(self, "tile_px", int(self.tile_px))
        object.__setattr__(self, "mpp", float(self.mpp))

    def key(self) -> dict[str, Any]:
        """The identity that must match: model, config, weights sha256, tile_px, mpp, dtype."""
        return {
            "model": self.model,
            "model_config": self.model_config,
            "weights_sha256": self.weights_sha256,
            "tile_px": self.tile_px,
            "mpp": round(self.mpp, 6),
            "embedding_dtype": self.embedding_dtype,
        }

    def matches(self, other: StoreFingerprint) -> bool:
        """True when `other` makes embeddings that may share a store with these."""
        return self.key() == other.key()

    def describe(self) -> str:
        """One line: model, weights, geometry, dtype and dim."""
        weights = self.weights_sha256 if len(self.weights_sha256) <= 16 else self.weights_sha256[:12] + "..."
        config = json.dumps(self.model_config, sort_keys=True, separators=(",", ":"))
        return (
            f"{self.model} {config} weights={weights} tile={self.tile_px}px@{self.mpp:g}um/px "
            f"{self.embedding_dtype} dim={self.embed_dim}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (inverse of `from_dict`)."""
        out = dataclasses.asdict(self)
        out["mean"] = None if self.mean is None else list(self.mean)
        out["std"] = None if self.std is None else list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreFingerprint:
        """Rebuild from `to_dict()` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise StoreError(
                f"fingerprint has unknown fields {sorted(unknown)}: the store was written by a newer mvh"
            )
        return cls(**data)


def tiles_schema(dim: int, dtype: str = "float32") -> pa.Schema:
    """Arrow schema of the `tiles` table for embeddings of `dim` values of `dtype`."""
    return pa.schema(
        [
            pa.field("slide_id", pa.string(), nullable=False),
            pa.field("tile_id", pa.string(), nullable=False),
            pa.field("x", pa.int64(), nullable=False),
            pa.field("y", pa.int64(), nullable=False),
            pa.field("tile_px", pa.int32(), nullable=False),
            pa.field("mpp", pa.float64(), nullable=False),
            pa.field("tissue_fraction", pa.float32()),
            pa.field("model", pa.string(), nullable=False),
            pa.field("weights_sha256", pa.string(), nullable=False),
            pa.field("commit", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(_DTYPES[dtype], dim), nullable=False),
        ]
    )


SLIDES_SCHEMA = pa.schema(
    [
        pa.field("slide_id", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("file_hash", pa.string()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("mpp", pa.float64()),
        pa.field("mpp_source", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("n_tiles", pa.int64()),
        pa.field("seconds", pa.float64()),
        pa.field("model", pa.string()),
        pa.field("weights", pa.string()),
        pa.field("mvh_version", pa.string()),
        pa.field("timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("commit", pa.string()),
        pa.field("checksum", pa.string()),
        pa.field("attrs", pa.string()),
    ]
)

META_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())])


_CREATE_ATTEMPTS = 8  # open_or_create waits up to ~9 s for a concurrent creator's meta table


class _CreationRace(Exception):
    """Another process seems to be creating the same store right now (open_or_create waits and retries)."""


def _quote(value: str) -> str:
    """A SQL string literal for a Lance filter."""
    return "'" + str(value).replace("'", "''") + "'"


def _is_commit_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return "conflict" in text or "retryable" in text


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _retry(op: Callable[[], T], what: str) -> T:
    """Run a Lance write, retrying on commit conflicts with concurrent writers."""
    for attempt in range(_COMMIT_RETRIES):
        try:
            return op()
        except _LANCE_ERRORS as exc:
            if not _is_commit_conflict(exc) or attempt == _COMMIT_RETRIES - 1:
                raise
            log.debug("commit conflict on %s (attempt %d): %s", what, attempt + 1, exc)
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def embeddings_to_numpy(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed_size_list<float>[dim] column as a float32 array [N, dim] (no Python loop)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(-1, dim), dtype=np.float32)


def embeddings_to_arrow(embeddings: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """A float array [N, dim] as a fixed_size_list<dtype>[dim] Arrow array."""
    flat = np.ascontiguousarray(embeddings, dtype=np.dtype(dtype)).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=_DTYPES[dtype]), embeddings.shape[1])


def embedding_checksum(tile_ids: pa.Array | pa.ChunkedArray, embedding: pa.Array | pa.ChunkedArray) -> str:
    """`sha256:<hex>` of a slide's embedding values as stored (little-endian), rows in tile_id order."""
    if isinstance(tile_ids, pa.ChunkedArray):
        tile_ids = tile_ids.combine_chunks() if tile_ids.num_chunks else pa.array([], pa.string())
    if isinstance(embedding, pa.ChunkedArray):
        embedding = embedding.combine_chunks() if embedding.num_chunks else pa.array([], embedding.type)
    values = embedding.take(pc.sort_indices(tile_ids)).flatten().to_numpy(zero_copy_only=False)
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(little).tobytes()).hexdigest()


def _new_commit() -> str:
    """A unique commit id that starts with its creation time (ms, hex), so leftovers can be aged."""
    return f"{int(time.time() * 1000):012x}-{uuid.uuid4().hex[:16]}"


def _commit_age_s(commit: str) -> float:
    try:
        return time.time() - int(commit.split("-", 1)[0], 16) / 1000.0
    except ValueError:
        return 0.0


def _attrs_json(value: Any, slide_id: str) -> str | None:
    """Per-slide extra attributes as a JSON object string (None when absent)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise StoreError(f"slide {slide_id}: attrs is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise StoreError(f"slide {slide_id}: attrs must be a JSON object, got {type(value).__name__}")
    return json.dumps(value, sort_keys=True, allow_nan=False)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _local_path(uri: str | Path) -> Path | None:
    """The directory of a local store, None for object-store URIs."""
    text = str(uri)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    return None if "://" in text else Path(text)


class EmbeddingStore:
    """A LanceDB store of tile embeddings bound to one `StoreFingerprint`."""

    def __init__(
        self, location: StoreLocation, db: Any, fingerprint: StoreFingerprint, meta: dict[str, Any]
    ) -> None:
        self.location = location
        self.uri = location.uri
        self._db = db
        self.fingerprint = fingerprint
        self.meta = meta
        self.notes: list[str] = []  # what opening or creating the store did that a user should hear about
        self._writable = False  # set once a write probe succeeded: checked once per handle, not per commit
        self._frozen_rows: pd.DataFrame | None = None  # slides rows of a read-only/pinned handle, read once
        self._row_map: SlideRows | None = None  # where each slide's tiles sit (read-only/pinned handles)
        try:
            self._tiles = db.open_table(TILES)
            self._slides = db.open_table(SLIDES)
            self._meta = db.open_table(META)
            if location.pinned:
                pinned = snapshot_versions(
                    self._tables(), tag=location.tag, version=location.version, where=location.uri
                )
                for name, table in self._tables().items():
                    table.checkout(pinned[name])
            names = set(self._slides.schema.names)
        except _DAMAGED_READ_ERRORS as exc:
            raise StoreDamagedError(
                f"store {self.uri} is damaged: its tiles/slides tables cannot be read ({_reason(exc)}); "
                "restore the store from a copy, or re-extract into a new --store"
            ) from exc
        # Stores written before commit ids and checksums: readable, not writable.
        self.legacy = "commit" not in names or "commit" not in self._tiles.schema.names

    # ---------------------------------------------------------------- opening
    @staticmethod
    def _connect(location: StoreLocation) -> Any:
        uri = location.uri
        local = _local_path(uri)
        if local is not None and local.exists() and not local.is_dir():
            raise StoreUnusableError(
                f"--store {uri} is a regular file, not a store directory: give a folder path (new or "
                "existing)"
            )
        # Writers and readers of the latest version: consistency interval 0, every read sees commits made
        # by other processes. A read-only or pinned handle reads one version: no re-check per read (on
        # object storage each re-check is a round trip).
        interval = None if location.read_only or location.pinned else timedelta(0)
        return lancedb.connect(
            uri, storage_options=location.storage_options or None, read_consistency_interval=interval
        )

    @staticmethod
    def _table_names(db: Any, location: StoreLocation | None = None) -> set[str]:
        names: set[str] = set()
        token = None
        while True:
            try:
                page = db.list_tables(page_token=token)
            except _LANCE_ERRORS as exc:
                where = "the store" if location is None else location.describe()
                said = _reason(exc) if location is None else location.redact(_reason(exc))
                raise StoreUnusableError(
                    f"cannot list the tables of {where} ({said}): check the URI, the credentials "
                    "(AWS_* variables or --storage-option) and the endpoint"
                ) from exc
            names.update(page.tables)
            token = page.page_token
            if not token:
                return names

    @staticmethod
    def _location(where: str | Path | StoreLocation) -> StoreLocation:
        return where if isinstance(where, StoreLocation) else parse_location(str(where))

    @classmethod
    def exists(cls, where: str | Path | StoreLocation) -> bool:
        """True when a complete store (with its `meta` table) is at `where` (a path, URI or location)."""
        location = cls._location(where)
        local = _local_path(location.uri)
        if local is not None and not local.exists():
            return False
        return META in cls._table_names(cls._connect(location), location)

    @classmethod
    def _check_no_stray_tables(cls, uri: str, db: Any, read_only: bool = False) -> str | None:
        """Refuse tables without meta; remove an empty interrupted creation (returns a note then)."""
        stray = sorted(cls._table_names(db) & {TILES, SLIDES})
        if not stray:
            return None
        local = _local_path(uri)
        empty = local is not None and all(_holds_no_data(local / f"{name}.lance") for name in stray)
        if empty:
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

    @classmethod
    def open(cls, where: str | Path | StoreLocation) -> EmbeddingStore:
        """Open an existing store (StoreNotFoundError if there is none): a path, URI[@tag] or location."""
        location = cls._location(where)
        uri = location.uri
        if not cls.exists(location):
            local = _local_path(uri)
            if local is None or local.exists():
                cls._check_no_stray_tables(uri, cls._connect(location), read_only=location.read_only)
            raise StoreNotFoundError(
                f"no embedding store at {uri}: create one with `mvh extract ... --store {uri}`"
            )
        db = cls._connect(location)
        try:
            table = db.open_table(META)
            if location.pinned:
                tables = {TILES: db.open_table(TILES), SLIDES: db.open_table(SLIDES), META: table}
                table.checkout(
                    snapshot_versions(tables, tag=location.tag, version=location.version, where=uri)[META]
                )
            rows = table.to_arrow().to_pylist()
            meta = {row["key"]: json.loads(row["value"]) for row in rows}
        except _DAMAGED_READ_ERRORS as exc:
            raise StoreDamagedError(
                f"store {uri} is damaged: its meta table cannot be read ({_reason(exc)}); restore "
                f"{uri}/meta.lance from a copy of the store, or re-extract into a new --store"
            ) from exc
        if "fingerprint" not in meta:
            raise StoreDamagedError(
                f"store {uri} is damaged: its meta table has no fingerprint; restore it from a copy, or "
                "re-extract into a new --store"
            )
        return cls(location, db, StoreFingerprint.from_dict(meta["fingerprint"]), meta)

    @classmethod
    def create(
        cls, where: str | Path | StoreLocation, fingerprint: StoreFingerprint, *, _racing: bool = False
    ) -> EmbeddingStore:
        """Create a new empty store bound to `fingerprint` (StoreError if one exists).

        `_racing` (open_or_create's earlier attempts): tables without meta, a failed table creation, or a
        store that appeared since open_or_create looked, may be another process creating the same store
        right now: raise `_CreationRace` to wait for it (and open its store).
        """
        location = cls._location(where)
        uri = location.uri
        if location.read_only or location.pinned:
            raise StoreUnusableError(
                f"no store at {location.describe()} to open read-only or at a tag/version: create it with a "
                "writable --store (no --read-only, no @tag or --store-version)"
            )
        if cls.exists(location):
            if _racing:  # another creator finished since open_or_create looked: open its store
                raise _CreationRace(uri)
            raise StoreError(f"a store already exists at {uri}: open it, or choose another --store path")
        db = cls._connect(location)
        if _racing and cls._table_names(db, location) & {TILES, SLIDES}:
            raise _CreationRace(uri)
        try:
            # racing: no tables a moment ago; any that appear now are the other creator's (exist_ok below)
            cleaned = None if _racing else cls._check_no_stray_tables(uri, db)
            schema = tiles_schema(fingerprint.embed_dim, fingerprint.embedding_dtype)
            db.create_table(TILES, data=schema.empty_table(), exist_ok=True)
            db.create_table(SLIDES, data=SLIDES_SCHEMA.empty_table(), exist_ok=True)
        except _LANCE_ERRORS as exc:
            if _racing:
                raise _CreationRace(uri) from exc
            raise StoreUnusableError(
                f"cannot create the store at {uri} ({_reason(exc)}): choose a writable --store path"
            ) from exc
        meta = {
            "fingerprint": fingerprint.to_dict(),
            "mvh_version": __version__,
            "created": _now().isoformat(),
        }
        rows = pa.table(
            {"key": list(meta), "value": [json.dumps(v) for v in meta.values()]}, schema=META_SCHEMA
        )
        try:
            db.create_table(META, data=rows)
        except _LANCE_ERRORS as exc:
            # Another process created the store between our check and now: use theirs if it agrees.
            if META not in cls._table_names(db, location):
                said = location.redact(_reason(exc))
                raise StoreUnusableError(f"cannot create the store at {uri}: {said}") from exc
            return cls._checked(cls.open(location), fingerprint)
        store = cls(location, db, fingerprint, meta)
        store.notes = [] if cleaned is None else [cleaned]
        if store._tiles.schema.field("embedding").type != schema.field("embedding").type:
            raise StoreError(f"store {uri} has a tiles table of another shape: choose another --store path")
        return store

    @classmethod
    def open_or_create(
        cls, where: str | Path | StoreLocation, fingerprint: StoreFingerprint
    ) -> EmbeddingStore:
        """Open the store if it matches `fingerprint`, else create it (FingerprintMismatchError).

        Two processes creating one store at once: the one that finds the other's tables half made waits
        for its meta table (a few seconds at most) and opens the store it created.
        """
        location = cls._location(where)
        for attempt in range(_CREATE_ATTEMPTS):
            if cls.exists(location):
                return cls._checked(cls.open(location), fingerprint)
            try:
                return cls.create(location, fingerprint, _racing=True)
            except _CreationRace:
                time.sleep(min(0.2 * 2**attempt, 2.0))
        if cls.exists(location):
            return cls._checked(cls.open(location), fingerprint)
        return cls.create(location, fingerprint)  # leftovers of a killed creation: cleaned or refused

    @staticmethod
    def _checked(store: EmbeddingStore, fingerprint: StoreFingerprint) -> EmbeddingStore:
        if not store.fingerprint.matches(fingerprint):
            theirs, ours = store.fingerprint.key(), fingerprint.key()
            fields = ", ".join(k for k in theirs if theirs[k] != ours[k])
            raise FingerprintMismatchError(
                f"store {store.uri} holds <{store.fingerprint.describe()}> but this run makes "
                f"<{fingerprint.describe()}> (differs in {fields}): use another --store path"
            )
        return store

    def check_writable(self) -> None:
        """Raise StoreUnusableError unless this process can write to the store (a probe write, once)."""
        if self.location.read_only or self.location.pinned:
            how = "with --read-only" if self.location.read_only else f"at {self.location.describe()}"
            raise StoreUnusableError(
                f"store {self.uri} is opened {how}: this command writes to it; open the latest version "
                "without --read-only, with credentials that can write"
            )
        if self.legacy:
            raise StoreUnusableError(
                f"store {self.uri} was written by an older mvh (no per-slide commit ids or checksums): it "
                "stays readable, but new slides go into a new store (`mvh export` it, then `mvh import` into "
                "a new --store)"
            )
        local = _local_path(self.uri)
        if self._writable:
            return
        if local is None:
            self._probe_remote_write()
            self._writable = True
            return
        for folder in (local, local / f"{TILES}.lance", local / f"{SLIDES}.lance"):
            try:
                fd, probe = tempfile.mkstemp(prefix=".mvh-write-probe-", dir=folder)
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                raise StoreUnusableError(
                    f"store {self.uri} is not writable ({_reason(exc)}): fix its permissions or mount, or "
                    "choose another --store"
                ) from exc
        self._writable = True

    def _probe_remote_write(self) -> None:
        """Write and delete a small object beside the tables: refused credentials show before any work."""
        from mvh.store.sidecar import SidecarFiles

        probe = SidecarFiles(self.location, "probe")
        name = f"write-{uuid.uuid4().hex}"
        try:
            probe.put(name, b"mvh write probe")
            probe.delete(name)
        except StoreError as exc:
            raise StoreUnusableError(
                f"store {self.uri} is not writable with these credentials ({exc}): give credentials that "
                "can write, or read it with --read-only"
            ) from exc

    # ---------------------------------------------------------------- versions, tags, meta
    def _tables(self) -> dict[str, Any]:
        return {TILES: self._tiles, SLIDES: self._slides, META: self._meta}

    def table_versions(self) -> dict[str, int]:
        """Version of each table as opened (what results record with the store URI)."""
        return table_versions(self._tables())

    def snapshot(self) -> dict[str, Any]:
        """Provenance for results: the store as named (URI, tag or version) and its table versions."""
        return {"uri": self.location.describe(), "version": self.version, "tables": self.table_versions()}

    def tags(self) -> dict[str, dict[str, int]]:
        """Tags of the store: name -> table versions they pin."""
        return list_tags(self._tables())

    def create_tag(self, name: str) -> dict[str, int]:
        """Tag the current version of every table as `name`."""
        self.check_writable()
        from mvh.store.location import check_tag_name

        return create_tag(self._tables(), check_tag_name(name), self.uri)

    def delete_tag(self, name: str) -> None:
        """Remove tag `name` from every table."""
        self.check_writable()
        delete_tag(self._tables(), name, self.uri)

    def set_meta(self, key: str, value: Any) -> None:
        """Write one JSON-able value into the store's meta table (replacing the key's old value)."""
        self.check_writable()
        if key == "fingerprint":
            raise StoreError("the fingerprint of a store is never rewritten")
        row = pa.table({"key": [key], "value": [json.dumps(value, allow_nan=False)]}, schema=META_SCHEMA)
        _retry(
            lambda: self._meta.merge_insert("key").when_matched_update_all().when_not_matched_insert_all()
            .execute(row),
            f"meta key {key}",
        )
        self.meta[key] = json.loads(json.dumps(value))

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.fingerprint.embed_dim

    @property
    def version(self) -> int:
        """Slides-table version: grows with every slide commit, failure record or optimisation."""
        return int(self._slides.version)

    @property
    def n_tiles(self) -> int:
        """Number of tiles of done slides."""
        done = self.slides(status=DONE)
        return int(done["n_tiles"].sum()) if len(done) else 0

    def schema(self) -> dict[str, pa.Schema]:
        """Arrow schemas of the tables."""
        return {TILES: self._tiles.schema, SLIDES: self._slides.schema}

    # ---------------------------------------------------------------- writing
    def _write(self, op: Callable[[], T], what: str) -> T:
        """A retried Lance write; a failure that is not a conflict becomes one StoreWriteError line."""
        try:
            return _retry(op, what)
        except _LANCE_ERRORS as exc:
            raise StoreWriteError(
                f"cannot write {what} to store {self.uri} ({_reason(exc)}): free space or fix the storage "
                "and rerun; slides committed before stay intact"
            ) from exc

    def add_slide(self, record: dict[str, Any], tiles: pd.DataFrame, embeddings: np.ndarray) -> None:
        """Commit a slide's tiles [N] and embeddings [N, dim] atomically and mark it done."""
        self.check_writable()
        slide_id = str(record["slide_id"])
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim or embeddings.shape[0] != len(tiles):
            raise StoreError(
                f"slide {slide_id}: embeddings of shape {embeddings.shape} do not match {len(tiles)} tiles "
                f"x dim {self.dim} of store {self.uri}"
            )
        if not np.isfinite(embeddings).all():
            raise StoreError(f"slide {slide_id}: embeddings contain NaN or inf; the slide was not stored")
        missing = [c for c in _TILE_INPUT_COLUMNS if c not in tiles.columns]
        if missing:
            raise StoreError(f"slide {slide_id}: tiles frame lacks columns {missing}")
        if tiles["tile_id"].duplicated().any():
            raise StoreError(f"slide {slide_id}: duplicate tile ids; tile ids must be unique")
        attrs = _attrs_json(record.get("attrs"), slide_id)
        commit = _new_commit()
        table = self._tiles_table(slide_id, tiles, embeddings, commit)
        checksum = embedding_checksum(table.column("tile_id"), table.column("embedding"))
        previous = self._slide_row(slide_id)
        self._append_tiles(slide_id, table)
        row = self._slide_record(record, status=DONE, error="", n_tiles=len(table))
        self._upsert_slide(row, commit=commit, checksum=checksum, attrs=attrs)
        self._drop_stale_tiles(
            slide_id, keep=commit, superseded=None if previous is None else previous["commit"]
        )

    def _append_tiles(self, slide_id: str, table: pa.Table) -> None:
        """Append a slide's tiles (invisible until its slides row names their commit)."""
        if len(table):
            self._write(lambda: self._tiles.add(table), f"the tiles of slide {slide_id}")

    def _drop_stale_tiles(self, slide_id: str, keep: str, superseded: str | None) -> None:
        """Delete a slide's superseded tiles and its invisible leftovers older than an hour (best effort)."""
        commits = self._tiles.search().where(f"slide_id = {_quote(slide_id)}").select(["commit"]).to_arrow()
        stale = {
            c
            for c in set(commits.column("commit").to_pylist())
            if c != keep and (c == superseded or _commit_age_s(c) > _ORPHAN_AGE_S)
        }
        if not stale:
            return
        where = f"slide_id = {_quote(slide_id)} AND commit IN ({', '.join(map(_quote, sorted(stale)))})"
        try:
            _retry(lambda: self._tiles.delete(where), f"delete stale tiles of {slide_id}")
        except _LANCE_ERRORS as exc:
            log.warning("store %s: stale tiles of %s kept (%s); they are invisible", self.uri, slide_id, exc)

    def add_failed_slide(self, record: dict[str, Any], error: str) -> bool:
        """Record a slide that could not be embedded; a done slide keeps its tiles (returns False then)."""
        self.check_writable()
        slide_id = str(record["slide_id"])
        previous = self._slide_row(slide_id)
        if previous is not None and previous["status"] == DONE:
            log.info("slide %s: re-embedding failed (%s); its committed tiles are kept", slide_id, error)
            return False
        row = self._slide_record(record, status=FAILED, error=error, n_tiles=0)
        self._upsert_slide(row, commit=None, checksum=None, attrs=_attrs_json(record.get("attrs"), slide_id))
        return True

    def _tiles_table(
        self, slide_id: str, tiles: pd.DataFrame, embeddings: np.ndarray, commit: str
    ) -> pa.Table:
        n = len(tiles)
        fp = self.fingerprint
        columns = {
            "slide_id": pa.array([slide_id] * n, pa.string()),
            "tile_id": pa.array(tiles["tile_id"].astype(str).to_numpy(), pa.string()),
            "x": pa.array(tiles["x"].to_numpy(np.int64)),
            "y": pa.array(tiles["y"].to_numpy(np.int64)),
            "tile_px": pa.array(tiles["tile_px"].to_numpy(np.int32)),
            "mpp": pa.array(tiles["mpp"].to_numpy(np.float64)),
            "tissue_fraction": pa.array(tiles["tissue_fraction"].to_numpy(np.float32)),
            "model": pa.array([fp.model] * n, pa.string()),
            "weights_sha256": pa.array([fp.weights_sha256] * n, pa.string()),
            "commit": pa.array([commit] * n, pa.string()),
            "embedding": embeddings_to_arrow(embeddings, fp.embedding_dtype),
        }
        return pa.table(columns, schema=tiles_schema(self.dim, fp.embedding_dtype))

    def _slide_record(self, record: dict[str, Any], status: str, error: str, n_tiles: int) -> dict[str, Any]:
        row = {name: record.get(name) for name in SLIDES_SCHEMA.names}
        row.update(
            slide_id=str(record["slide_id"]),
            path=None if record.get("path") is None else str(record["path"]),
            status=status,
            error=error,
            n_tiles=n_tiles,
            model=self.fingerprint.model,
            weights=self.fingerprint.weights_sha256,
            mvh_version=__version__,
            timestamp=_now(),
        )
        for name in ("mpp", "seconds"):
            if row[name] is not None and not math.isfinite(float(row[name])):
                row[name] = None
        return row

    def _upsert_slide(
        self, row: dict[str, Any], commit: str | None, checksum: str | None, attrs: str | None
    ) -> None:
        table = pa.Table.from_pylist(
            [dict(row, commit=commit, checksum=checksum, attrs=attrs)], schema=SLIDES_SCHEMA
        )
        self._write(
            lambda: (
                self._slides.merge_insert("slide_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(table)
            ),
            f"the slides row of {row['slide_id']}",
        )

    def optimize(self) -> None:
        """Compact the tiles table and keep BTREE indexes on slide_id and tile_id current (old versions kept).

        Per-slide reads and `rows_by_tile_ids` filter on these columns; without an index each filter scans
        the column. A failure here (e.g. a conflict with another process still writing) is only logged:
        the store stays correct, merely slower to read.
        """
        try:
            indexed = {tuple(ix.columns) for ix in self._tiles.list_indices()}
            for column in ("slide_id", "tile_id"):
                if (column,) not in indexed and self._tiles.count_rows():
                    _retry(lambda c=column: self._tiles.create_index(c, config=BTree()), f"index {column}")
            _retry(self._tiles.optimize, "optimize tiles")
            _retry(self._slides.optimize, "optimize slides")
        except _LANCE_ERRORS as exc:
            log.warning("store %s: optimisation skipped (%s); reads stay correct", self.uri, exc)

    # ---------------------------------------------------------------- reading
    def _slide_rows(self, where: str | None = None) -> pd.DataFrame:
        """Slides rows, one per slide (the latest when racing writers left two), sorted by slide_id.

        A read-only or pinned handle reads one version, so it reads the table once (each query is several
        object-store requests) and answers from that copy.
        """
        if self.location.read_only or self.location.pinned:
            if self._frozen_rows is None:
                self._frozen_rows = self._query_slide_rows(None)
            if where is None:
                return self._frozen_rows.copy()
        return self._query_slide_rows(where)

    def _query_slide_rows(self, where: str | None) -> pd.DataFrame:
        query = self._slides.search()
        if where is not None:
            query = query.where(where)
        try:
            frame = query.to_arrow().to_pandas()
        except _DAMAGED_READ_ERRORS as exc:
            raise StoreDamagedError(
                f"store {self.uri} is damaged: its slides table cannot be read ({_reason(exc)}); restore it "
                "from a copy"
            ) from exc
        if self.legacy:
            for name in ("commit", "checksum", "attrs", "file_hash"):
                if name not in frame.columns:
                    frame[name] = None
        frame = frame.sort_values(["slide_id", "timestamp"], kind="stable")
        frame = frame.drop_duplicates("slide_id", keep="last")
        return frame.reset_index(drop=True)

    def _slide_row(self, slide_id: str) -> dict[str, Any] | None:
        if self.location.read_only or self.location.pinned:
            rows = self._slide_rows()
            rows = rows[rows["slide_id"] == slide_id]
        else:
            rows = self._slide_rows(f"slide_id = {_quote(slide_id)}")
        return rows.iloc[0].to_dict() if len(rows) else None

    def slides(self, status: str | None = None) -> pd.DataFrame:
        """One row per slide (sorted by slide_id), optionally only those with `status`."""
        frame = self._slide_rows()
        if status is not None:
            frame = frame[frame["status"] == status].reset_index(drop=True)
        return frame

    def slide_ids(self, status: str | None = DONE) -> list[str]:
        """Sorted ids of slides with `status` (all slides when None)."""
        return [str(s) for s in self.slides(status)["slide_id"]]

    def slide_attrs(self, slide_id: str) -> dict[str, Any]:
        """A slide's extra attributes (the `attrs` JSON object given at commit; {} when none)."""
        row = self._slide_row(slide_id)
        if row is None:
            raise StoreError(f"slide {slide_id} is absent in store {self.uri}: list slides with `mvh info`")
        text = row.get("attrs")
        return {} if text is None or (isinstance(text, float) and math.isnan(text)) else json.loads(text)

    def _done_row(self, slide_id: str) -> dict[str, Any]:
        row = self._slide_row(slide_id)
        if row is None or row["status"] != DONE:
            state = "absent" if row is None else row["status"]
            raise StoreError(f"slide {slide_id} is {state} in store {self.uri}: list slides with `mvh info`")
        return row

    def _tiles_where(self, row: dict[str, Any]) -> str:
        where = f"slide_id = {_quote(row['slide_id'])}"
        return where if self.legacy else f"{where} AND commit = {_quote(row['commit'])}"

    def _visible(self, table: pa.Table, done: pd.DataFrame) -> pa.Table:
        """Rows of `table` that belong to the committed tiles of the `done` slides."""
        if self.legacy:
            return table.filter(
                pc.is_in(table.column("slide_id"), value_set=pa.array(list(done["slide_id"]), pa.string()))
            )
        return table.filter(
            pc.is_in(table.column("commit"), value_set=pa.array(list(done["commit"]), pa.string()))
        )

    def _read_tiles(self, where: str | None, columns: Sequence[str]) -> pa.Table:
        query = self._tiles.search()
        if where is not None:
            query = query.where(where)
        extra = [] if self.legacy else ["commit"]
        wanted = list(dict.fromkeys([*columns, "slide_id", "x", "y", "tile_id", *extra]))
        try:
            table = query.select(wanted).to_arrow()
        except _DAMAGED_READ_ERRORS as exc:
            raise self._unreadable_tiles(exc) from exc
        return _in_order(table)

    def _unreadable_tiles(self, exc: BaseException) -> StoreDamagedError:
        return StoreDamagedError(
            f"store {self.uri} is damaged: its tiles cannot be read ({_reason(exc)}); run "
            f"`mvh verify --store {self.uri}` and restore the store from a copy"
        )

    def _take_slide(self, row: dict[str, Any], columns: Sequence[str]) -> pa.Table:
        """A slide's committed tile rows read by row id: the same rows and columns as the filtered read.

        Only for handles that read one table version (read-only or pinned): the map of row ids is scanned
        once per version (see mvh.store.slide_rows). A writable handle follows the latest version, which
        may be compacted between the map and the take (row ids move), so it reads through the filter.
        """
        slide_id = str(row["slide_id"])
        commit = None if self.legacy else str(row["commit"])
        keys = ["slide_id"] if self.legacy else ["slide_id", "commit"]
        values = [slide_id] if self.legacy else [slide_id, commit]
        fetch = list(dict.fromkeys(c for c in [*columns, "x", "y", "tile_id"] if c not in keys))
        try:
            if self._row_map is None or self._row_map.version != self._tiles.version:
                self._row_map = SlideRows.scan(self._tiles, with_commit=not self.legacy)
            ids = self._row_map.row_ids(slide_id, commit)
            if len(ids):
                table = self._tiles.take_row_ids(ids.tolist()).select(fetch).to_arrow()
            else:
                table = self._tiles.schema.empty_table().select(fetch)
        except _DAMAGED_READ_ERRORS as exc:
            raise self._unreadable_tiles(exc) from exc
        for name, value in zip(keys, values, strict=True):
            field = self._tiles.schema.field(name)  # the map matched these values on every row it holds
            table = table.append_column(field, pa.array([value] * table.num_rows, field.type))
        wanted = list(dict.fromkeys([*columns, "slide_id", "x", "y", "tile_id", *keys]))
        return _in_order(table.select(wanted))

    def _counts_match(self, table: pa.Table, done: pd.DataFrame) -> bool:
        """True when `table` holds exactly n_tiles rows of each done slide (no concurrent swap in between)."""
        got = pd.Series(table.column("slide_id").to_pylist(), dtype=object).value_counts()
        want = done.set_index("slide_id")["n_tiles"]
        return bool(got.reindex(want.index, fill_value=0).astype(int).equals(want.astype(int)))

    def _mismatch(self, slide_ids: Sequence[str]) -> StoreDamagedError:
        return StoreDamagedError(
            f"store {self.uri}: slides {list(slide_ids)[:5]} do not hold the tiles their rows count; run "
            f"`mvh verify --store {self.uri}`, then re-extract them with --overwrite"
        )

    def raw_slide_tiles(
        self, slide_id: str, columns: Sequence[str] = ("embedding",)
    ) -> tuple[dict[str, Any], pa.Table]:
        """A done slide's row and its committed tile rows as stored, UNCHECKED (for integrity checks)."""
        row = self._done_row(slide_id)
        if self.location.read_only or self.location.pinned:
            return row, self._take_slide(row, columns)
        return row, self._read_tiles(self._tiles_where(row), columns)

    def _slide_table(self, slide_id: str, columns: Sequence[str]) -> pa.Table:
        """A done slide's committed tiles, re-read if a concurrent overwrite swapped them mid-read."""
        for _ in range(_READ_RETRIES):
            row, table = self.raw_slide_tiles(slide_id, columns)
            if table.num_rows == int(row["n_tiles"]):
                return table
        raise self._mismatch([slide_id])

    def _finite(self, emb: np.ndarray, slide_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """`emb`, or StoreDamagedError naming the slides holding NaN/inf (bit rot, a damaged data file)."""
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            names = sorted(set(np.asarray(slide_ids.to_pylist(), dtype=object)[bad]))
            raise StoreDamagedError(
                f"store {self.uri}: non-finite embedding values in slide(s) {names[:5]} (a damaged data "
                f"file); run `mvh verify --store {self.uri}`, then re-extract them with --overwrite"
            )
        return emb

    def slide_tiles(self, slide_id: str) -> pd.DataFrame:
        """A done slide's tile rows (no embeddings), ordered by (y, x)."""
        columns = [n for n in self._tiles.schema.names if n not in ("embedding", "commit")]
        return self._slide_table(slide_id, columns).select(columns).to_pandas()

    def slide_embeddings(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A done slide's embeddings [N, dim] float32 and level-0 coords [N, 2] int64 (x, y), by (y, x)."""
        return self._split(self._slide_table(slide_id, ["embedding"]))

    def _split(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        emb = self._finite(embeddings_to_numpy(table.column("embedding"), self.dim), table.column("slide_id"))
        coords = np.stack([table.column("x").to_numpy(), table.column("y").to_numpy()], axis=1)
        return emb, coords.astype(np.int64, copy=False)

    def iter_slides(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield (slide_id, embeddings [N, dim], coords [N, 2]) for each done slide in id order."""
        for slide_id in self.slide_ids(DONE):
            emb, coords = self.slide_embeddings(slide_id)
            yield slide_id, emb, coords

    def scan_tiles(
        self, slide_ids: Sequence[str], columns: Sequence[str], batch_rows: int = 65536
    ) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        """Stream the visible tile rows of done `slide_ids` in one scan: (slide index int64 [B], rows).

        The slide index says which of `slide_ids` each row belongs to. Only the rows of each slide's
        committed write are yielded (never a superseded or unfinished one); rows come in storage order, and
        counts and values are the caller's to check (`all_embeddings` does both). For cohort readers that
        fill preallocated arrays without the copies `all_embeddings` makes.
        """
        order = [str(s) for s in slide_ids]
        rows = self.slides(status=DONE).set_index("slide_id")
        absent = [s for s in order if s not in rows.index]
        if absent:
            raise StoreError(f"slide(s) {absent[:5]} are not done in store {self.uri}: extract them first")
        key = "slide_id" if self.legacy else "commit"
        values = order if self.legacy else [str(c) for c in rows.loc[order, "commit"]]
        value_set = pa.array(values, pa.string())
        query = self._tiles.search().select(list(dict.fromkeys(["slide_id", key, *columns])))
        if order and 2 * len(order) < len(rows):  # a small part of the store: let Lance filter
            query = query.where(f"slide_id IN ({', '.join(_quote(s) for s in order)})")
        for batch in query.to_batches(batch_rows) if order else []:
            index = pc.fill_null(pc.index_in(batch.column(key), value_set=value_set), -1)
            index = index.to_numpy(zero_copy_only=False).astype(np.int64)
            keep = np.flatnonzero(index >= 0)
            if len(keep):
                yield index[keep], batch if len(keep) == batch.num_rows else batch.take(pa.array(keep))

    def all_embeddings(
        self,
        columns: Sequence[str] = ("slide_id", "tile_id", "x", "y", "tile_px", "mpp"),
        slide_ids: Sequence[str] | None = None,
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Rows (chosen columns) and embeddings [N, dim] float32 of done tiles by (slide_id, y, x), one scan.

        `slide_ids` restricts the read to those done slides (StoreError naming any that is not done).
        """
        where = None
        if slide_ids is not None:
            wanted = list(dict.fromkeys(str(s) for s in slide_ids))
            where = f"slide_id IN ({', '.join(map(_quote, wanted))})" if wanted else "false"
        for _ in range(_READ_RETRIES):
            done = self.slides(DONE)
            if slide_ids is not None:
                missing = sorted(set(wanted) - set(done["slide_id"]))
                if missing:
                    raise StoreError(
                        f"slides {missing[:5]} are not done in store {self.uri}: list slides with `mvh info`"
                    )
                done = done[done["slide_id"].isin(wanted)]
            table = self._visible(self._read_tiles(where, [*columns, "embedding"]), done)
            if self._counts_match(table, done):
                break
        else:
            raise self._mismatch(list(done["slide_id"]))
        emb = self._finite(embeddings_to_numpy(table.column("embedding"), self.dim), table.column("slide_id"))
        return table.select(list(columns)).to_pandas(), emb

    def rows_by_tile_ids(self, tile_ids: Sequence[str], with_embeddings: bool = False) -> pd.DataFrame:
        """Tile rows of done slides in the order of `tile_ids` (StoreError naming any missing id)."""
        columns = [
            n for n in self._tiles.schema.names if (with_embeddings or n != "embedding") and n != "commit"
        ]
        wanted = list(dict.fromkeys(str(t) for t in tile_ids))
        parts = []
        extra = [] if self.legacy else ["commit"]
        for start in range(0, len(wanted), 1000):
            chunk = ", ".join(_quote(t) for t in wanted[start : start + 1000])
            parts.append(
                self._tiles.search().where(f"tile_id IN ({chunk})").select([*columns, *extra]).to_arrow()
            )
        empty = self._tiles.schema.empty_table().select([*columns, *extra])
        table = self._visible(pa.concat_tables(parts) if parts else empty, self.slides(DONE))
        position = pc.index_in(
            pa.array([str(t) for t in tile_ids], pa.string()), value_set=table.column("tile_id")
        )
        if position.null_count:
            missing = [t for t, p in zip(tile_ids, position.to_pylist(), strict=True) if p is None][:5]
            raise StoreError(
                f"tile ids {missing} are not in store {self.uri}: rebuild the index with `mvh index build`"
            )
        table = table.take(position)
        frame = table.select([c for c in columns if c != "embedding"]).to_pandas()
        if with_embeddings:
            emb = self._finite(
                embeddings_to_numpy(table.column("embedding"), self.dim), table.column("slide_id")
            )
            frame["embedding"] = list(emb)
        return frame

    def orphan_tile_count(self) -> int:
        """Tile rows no slide row names (interrupted or lost concurrent commits): invisible, harmless."""
        if self.legacy:
            return 0
        commits = self._tiles.search().select(["commit"]).to_arrow().column("commit")
        named = pa.array([c for c in self.slides(DONE)["commit"] if c is not None], pa.string())
        if not len(commits):
            return 0
        visible = pc.sum(pc.is_in(commits, value_set=named)).as_py() or 0
        return len(commits) - int(visible)

    def info(self) -> dict[str, Any]:
        """A JSON-ready description: fingerprint, counts, slides by status, schemas."""
        slides = self.slides()
        counts = slides["status"].value_counts().to_dict() if len(slides) else {}
        card = self.meta.get("card")
        return {
            "uri": self.uri,
            "opened_as": self.location.describe(),
            "read_only": self.location.read_only or self.location.pinned,
            "storage_options": self.location.public_options(),
            "version": self.version,
            "table_versions": self.table_versions(),
            "tags": self.tags(),
            "card_fields": card.get("fields", {}) if isinstance(card, dict) else None,
            "card": card if isinstance(card, dict) else None,
            "fingerprint": self.fingerprint.to_dict(),
            "mvh_version": self.meta.get("mvh_version"),
            "created": self.meta.get("created"),
            "n_slides": len(slides),
            "slides_by_status": {str(k): int(v) for k, v in counts.items()},
            "n_tiles": int(slides.loc[slides["status"] == DONE, "n_tiles"].sum()) if len(slides) else 0,
            "writable_layout": not self.legacy,
            "schema": {name: [f"{f.name}: {f.type}" for f in s] for name, s in self.schema().items()},
        }


def _in_order(table: pa.Table) -> pa.Table:
    """Tile rows ordered by (slide_id, y, x, tile_id), ties in the order given."""
    keys = [(name, "ascending") for name in ("slide_id", "y", "x", "tile_id")]
    return table.take(pc.sort_indices(table, sort_keys=keys))


def _holds_no_data(table_dir: Path) -> bool:
    """True when a Lance table folder has no data files (an empty or interrupted creation)."""
    data = table_dir / "data"
    return not data.exists() or not any(p.is_file() for p in data.rglob("*"))
