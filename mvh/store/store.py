"""`EmbeddingStore`: the public face of a store, composed of its parts.

A store is one LanceDB database (a directory or any URI `lancedb.connect` accepts) of three tables
(`mvh.store.schema`), bound to one `StoreFingerprint`. The parts: `location` (where it lives, its
credentials), `connect` (opening and creating), `reader` (every read, through the one `visibility` rule
chosen at open), `writer` (per-slide commits), `versions` (table versions, tags, snapshots) and
`integrity` (`verify_store`). Callers use this class; the parts are its implementation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mvh.core.jsonio import json_round_trip
from mvh.errors import (
    FingerprintMismatchError,
    StoreError,
    StoreNotFoundError,
    StoreUnusableError,
    UsageError,
)
from mvh.store import connect
from mvh.store.info import StoreInfo
from mvh.store.location import StoreLocation, check_tag_name, parse_location
from mvh.store.reader import StoreReader
from mvh.store.schema import DONE, SLIDES, TILES, StoreFingerprint, tiles_schema
from mvh.store.versions import create_tag, delete_tag, list_tags, table_versions
from mvh.store.writer import StoreWriter

_CREATE_ATTEMPTS = 8  # open_or_create waits up to ~9 s for a concurrent creator's meta table
TILE_COLUMNS = ("slide_id", "tile_id", "x", "y", "tile_px", "mpp")


def as_location(where: str | Path | StoreLocation) -> StoreLocation:
    """`where` as a StoreLocation (a path or URI[@tag] is parsed with the environment's options)."""
    return where if isinstance(where, StoreLocation) else parse_location(str(where))


class EmbeddingStore:
    """A LanceDB store of tile embeddings bound to one `StoreFingerprint`."""

    def __init__(
        self, location: StoreLocation, db: Any, fingerprint: StoreFingerprint, meta: dict[str, Any]
    ) -> None:
        self.location = location
        self.uri = location.uri
        self.fingerprint = fingerprint
        self.meta = meta
        self.notes: list[str] = []  # what opening or creating the store did that a user should hear about
        self._writable = False  # set once a write probe succeeded: checked once per handle, not per commit
        self.tables, self.visibility = connect.open_tables(db, location)
        self.reader = StoreReader(self.tables, location, fingerprint.embed_dim, self.visibility)
        self.writer = StoreWriter(self.tables, self.uri, fingerprint, self.reader, self.check_writable)

    @property
    def legacy(self) -> bool:
        """Whether the store predates per-slide commit ids and checksums (readable, not writable)."""
        return self.visibility.legacy

    # ---------------------------------------------------------------- opening
    @classmethod
    def exists(cls, where: str | Path | StoreLocation) -> bool:
        """True when a complete store (with its `meta` table) is at `where` (a path, URI or location)."""
        return connect.store_exists(as_location(where))

    @classmethod
    def open(cls, where: str | Path | StoreLocation) -> EmbeddingStore:
        """Open an existing store (StoreNotFoundError if there is none): a path, URI[@tag] or location."""
        location = as_location(where)
        uri = location.uri
        if not cls.exists(location):
            local = location.local_path
            if local is None or local.exists():
                connect.check_no_stray_tables(
                    location, connect.connect(location), read_only=location.read_only
                )
            raise StoreNotFoundError(
                f"no embedding store at {uri}: create one with `mvh extract ... --store {uri}`"
            )
        db = connect.connect(location)
        meta = connect.read_meta(db, location)
        return cls(location, db, StoreFingerprint.from_dict(meta["fingerprint"]), meta)

    @classmethod
    def open_snapshot(cls, where: str | Path | StoreLocation) -> EmbeddingStore:
        """Open for reading only, frozen at the table versions current now (as `--read-only` does).

        For jobs that read every slide (verify, export, survival): a frozen handle takes a slide's tiles
        by row id from one scan of the row map, where a writable handle filters the whole tiles table
        once per slide (4 s a slide at 10M tiles: quadratic over a store).
        """
        return cls.open(dataclasses.replace(as_location(where), read_only=True))

    @classmethod
    def create(
        cls, where: str | Path | StoreLocation, fingerprint: StoreFingerprint, *, _racing: bool = False
    ) -> EmbeddingStore:
        """Create a new empty store bound to `fingerprint` (StoreError if one exists).

        `_racing` (open_or_create's earlier attempts): tables without meta, a failed table creation, or a
        store that appeared since open_or_create looked, may be another process creating the same store
        right now: raise `CreationRace` to wait for it (and open its store).
        """
        location = as_location(where)
        uri = location.uri
        if location.read_only or location.pinned:
            raise StoreUnusableError(
                f"no store at {location.describe()} to open read-only or at a tag/version: create it with a "
                "writable --store (no --read-only, no @tag or --store-version)"
            )
        if cls.exists(location):
            if _racing:  # another creator finished since open_or_create looked: open its store
                raise connect.CreationRace(uri)
            raise StoreError(f"a store already exists at {uri}: open it, or choose another --store path")
        db = connect.connect(location)
        meta, cleaned = connect.create_tables(location, db, fingerprint, racing=_racing)
        if (
            meta is None
        ):  # another process created the store between our check and now: use theirs if it agrees
            return cls._checked(cls.open(location), fingerprint)
        store = cls(location, db, fingerprint, meta)
        store.notes = [] if cleaned is None else [cleaned]
        want = tiles_schema(fingerprint.embed_dim, fingerprint.embedding_dtype).field("embedding").type
        if store.tables.tiles.schema.field("embedding").type != want:
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
        location = as_location(where)
        if location.pinned:
            raise UsageError(
                f"--store {location.describe()} names a past snapshot, which is read-only: writing goes to "
                "the latest version, so drop --store-version / @TAG"
            )
        for attempt in range(_CREATE_ATTEMPTS):
            if cls.exists(location):
                return cls._checked(cls.open(location), fingerprint)
            try:
                return cls.create(location, fingerprint, _racing=True)
            except connect.CreationRace:
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
        if not self._writable:
            connect.probe_writable(self.location)
            self._writable = True

    # ---------------------------------------------------------------- versions, tags, meta
    def table_versions(self) -> dict[str, int]:
        """Version of each table as opened (what results record with the store URI)."""
        return table_versions(self.tables.by_name())

    def snapshot(self) -> dict[str, Any]:
        """Provenance for results: the store as named (URI, tag or version) and its table versions."""
        return {"uri": self.location.describe(), "version": self.version, "tables": self.table_versions()}

    def tags(self) -> dict[str, dict[str, int]]:
        """Tags of the store: name -> table versions they pin."""
        return list_tags(self.tables.by_name())

    def create_tag(self, name: str) -> dict[str, int]:
        """Tag the current version of every table as `name`."""
        self.check_writable()
        return create_tag(self.tables.by_name(), check_tag_name(name), self.uri)

    def delete_tag(self, name: str) -> None:
        """Remove tag `name` from every table."""
        self.check_writable()
        delete_tag(self.tables.by_name(), name, self.uri)

    def set_meta(self, key: str, value: Any) -> None:
        """Write one JSON-able value into the store's meta table (replacing the key's old value)."""
        self.writer.set_meta(key, value)
        self.meta[key] = json_round_trip(value)

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.fingerprint.embed_dim

    @property
    def version(self) -> int:
        """Slides-table version: grows with every slide commit, failure record or optimisation."""
        return int(self.tables.slides.version)

    @property
    def n_tiles(self) -> int:
        """Number of tiles of done slides."""
        done = self.slides(status=DONE)
        return int(done["n_tiles"].sum()) if len(done) else 0

    def schema(self) -> dict[str, pa.Schema]:
        """Arrow schemas of the tiles and slides tables."""
        return {TILES: self.tables.tiles.schema, SLIDES: self.tables.slides.schema}

    # ---------------------------------------------------------------- writing
    def add_slide(self, record: dict[str, Any], tiles: pd.DataFrame, embeddings: np.ndarray) -> None:
        """Commit a slide's tiles [N] and embeddings [N, dim] atomically and mark it done."""
        self.writer.add_slide(record, tiles, embeddings)

    def add_failed_slide(self, record: dict[str, Any], error: str) -> bool:
        """Record a slide that could not be embedded; a done slide keeps its tiles (returns False then)."""
        return self.writer.add_failed_slide(record, error)

    def optimize(self) -> None:
        """Compact the tiles table, keep its slide_id and tile_id indexes current (failures only logged)."""
        self.writer.optimize()

    # ---------------------------------------------------------------- reading
    def slides(self, status: str | None = None) -> pd.DataFrame:
        """One row per slide (sorted by slide_id), optionally only those with `status`."""
        return self.reader.slides(status)

    def slide_ids(self, status: str | None = DONE) -> list[str]:
        """Sorted ids of slides with `status` (all slides when None)."""
        return [str(s) for s in self.slides(status)["slide_id"]]

    def slide_attrs(self, slide_id: str) -> dict[str, Any]:
        """A slide's extra attributes (the `slide_attrs` JSON object given at commit; {} when none)."""
        return self.reader.slide_attrs(slide_id)

    def raw_slide_tiles(
        self, slide_id: str, columns: Sequence[str] = ("embedding",)
    ) -> tuple[dict[str, Any], pa.Table]:
        """A done slide's row and its committed tile rows as stored, UNCHECKED (for integrity checks)."""
        return self.reader.raw_slide_tiles(slide_id, columns)

    def slide_tiles(self, slide_id: str) -> pd.DataFrame:
        """A done slide's tile rows (no embeddings), ordered by (y, x)."""
        return self.reader.slide_tiles(slide_id)

    def slide_embeddings(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A done slide's embeddings [N, dim] float32 and level-0 coords [N, 2] int64 (x, y), by (y, x)."""
        return self.reader.slide_embeddings(slide_id)

    def iter_slides(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield (slide_id, embeddings [N, dim], coords [N, 2]) for each done slide in id order."""
        for slide_id in self.slide_ids(DONE):
            emb, coords = self.slide_embeddings(slide_id)
            yield slide_id, emb, coords

    def scan_tiles(
        self, slide_ids: Sequence[str], columns: Sequence[str], batch_rows: int = 65536
    ) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        """Stream the visible tile rows of done `slide_ids` in one scan: (slide index int64 [B], rows)."""
        return self.reader.scan_tiles(slide_ids, columns, batch_rows)

    def all_embeddings(
        self, columns: Sequence[str] = TILE_COLUMNS, slide_ids: Sequence[str] | None = None
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Rows (chosen columns) and embeddings [N, dim] float32 of done tiles by (slide_id, y, x), one scan.

        `slide_ids` restricts the read to those done slides (StoreError naming any that is not done).
        """
        return self.reader.all_embeddings(columns, slide_ids)

    def rows_by_tile_ids(self, tile_ids: Sequence[str], with_embeddings: bool = False) -> pd.DataFrame:
        """Tile rows of done slides in the order of `tile_ids` (StoreError naming any missing id)."""
        return self.reader.rows_by_tile_ids(tile_ids, with_embeddings)

    def orphan_tile_count(self) -> int:
        """Tile rows no slide row names (interrupted or lost concurrent commits): invisible, harmless."""
        return self.reader.orphan_tile_count()

    def info(self) -> StoreInfo:
        """The store's description: fingerprint, counts, slides by status, schemas."""
        slides = self.slides()
        counts = slides["status"].value_counts().to_dict() if len(slides) else {}
        card = self.meta.get("card")
        return StoreInfo(
            uri=self.uri,
            opened_as=self.location.describe(),
            read_only=self.location.read_only or self.location.pinned,
            storage_options=self.location.public_options(),
            version=self.version,
            table_versions=self.table_versions(),
            tags=self.tags(),
            card_fields=card.get("fields", {}) if isinstance(card, dict) else None,
            card=card if isinstance(card, dict) else None,
            fingerprint=self.fingerprint.shared(),  # no local path in what users paste
            mvh_version=self.meta.get("mvh_version"),
            created=self.meta.get("created"),
            n_slides=len(slides),
            slides_by_status={str(k): int(v) for k, v in counts.items()},
            n_tiles=int(slides.loc[slides["status"] == DONE, "n_tiles"].sum()) if len(slides) else 0,
            writable_layout=not self.legacy,
            schema={name: [f"{f.name}: {f.type}" for f in s] for name, s in self.schema().items()},
        )
