"""Writes to a store: per-slide commits, failed slides, meta keys and optimisation.

Commit protocol (idempotent per slide, safe with concurrent writers): a slide's tiles are appended in ONE
Lance commit under a fresh commit id, then ONE upsert of its slides row (status done, that commit id, the
checksum of its embedding bytes) switches readers to them (`mvh.store.visibility`). A crash, a lost race
between two writers of one slide, or a failed re-embedding (`--overwrite`) leaves only invisible rows
behind, and the old tiles stay readable until the new ones are committed. Lance does not detect two
concurrent inserts of one key, so two racing upserts can leave two rows for a slide: readers keep the
latest. Tiles of a superseded commit are deleted after the switch; invisible leftovers older than an hour
are deleted by the next commit of their slide through a handle that knows them (`StoreWriter.tile_commits`:
the leftovers in the table when the handle first commits, and its own).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
from lancedb.index import BTree

from mvh import __version__
from mvh.errors import StoreError, StoreWriteError
from mvh.store.reader import StoreReader
from mvh.store.remote_errors import remote_failure
from mvh.store.schema import (
    DONE,
    FAILED,
    META_SCHEMA,
    OLD_SLIDE_ATTRS,
    SLIDE_ATTRS,
    SLIDES_SCHEMA,
    TILE_INPUT_COLUMNS,
    StoreFingerprint,
    embedding_checksum,
    embeddings_to_arrow,
    slides_schema,
    tiles_schema,
)
from mvh.store.tables import LANCE_ERRORS, StoreTables, quote, reason, retry

log = logging.getLogger(__name__)

ORPHAN_AGE_S = 3600.0
T = TypeVar("T")


def new_commit() -> str:
    """A unique commit id that starts with its creation time (ms, hex), so leftovers can be aged."""
    return f"{int(time.time() * 1000):012x}-{uuid.uuid4().hex[:16]}"


def commit_age_s(commit: str) -> float:
    """Seconds since a commit id was made (0 for ids without a time prefix)."""
    try:
        return time.time() - int(commit.split("-", 1)[0], 16) / 1000.0
    except ValueError:
        return 0.0


def attrs_json(record: dict[str, Any], slide_id: str) -> str | None:
    """A record's per-slide extra attributes (`slide_attrs`) as a JSON object string (None when absent)."""
    if OLD_SLIDE_ATTRS in record:  # the old key would be dropped without a word
        raise StoreError(f"slide {slide_id}: the record key `attrs` is now `slide_attrs`")
    value = record.get(SLIDE_ATTRS)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise StoreError(f"slide {slide_id}: slide_attrs is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise StoreError(f"slide {slide_id}: slide_attrs must be a JSON object, got {type(value).__name__}")
    return json.dumps(value, sort_keys=True, allow_nan=False)


def now() -> datetime:
    """The current UTC time (slides rows and meta record it)."""
    return datetime.now(timezone.utc)


class StoreWriter:
    """The writes of one opened store; `guard` raises unless the handle may write (checked on each write)."""

    def __init__(
        self,
        tables: StoreTables,
        uri: str,
        fingerprint: StoreFingerprint,
        reader: StoreReader,
        guard: Callable[[], None],
    ) -> None:
        self.tables = tables
        self.uri = uri
        self.fingerprint = fingerprint
        self.reader = reader
        self.guard = guard
        self._tile_commits: dict[str, set[str]] | None = None  # slide -> commits of its tile rows

    def tile_commits(self, slide_id: str) -> set[str]:
        """The commits of `slide_id`'s tile rows (a live set this handle keeps up to date).

        The first call streams (slide_id, commit) of the tiles table once; the handle's own appends and
        deletes then keep it current. A filter on slide_id per commit read the whole tiles table each
        time (0.4 s a slide at 10M tiles), which made writing a store quadratic in its slides.
        """
        if self._tile_commits is None:
            seen: dict[str, set[str]] = {}
            query = self.tables.tiles.search().select(["slide_id", "commit"])
            for batch in query.to_batches(65536):
                pairs = pa.Table.from_batches([batch]).group_by(["slide_id", "commit"]).aggregate([])
                for slide, commit in zip(pairs.column("slide_id").to_pylist(),
                                         pairs.column("commit").to_pylist(), strict=True):
                    if commit is not None:
                        seen.setdefault(slide, set()).add(commit)
            self._tile_commits = seen
        return self._tile_commits.setdefault(slide_id, set())

    def write(self, op: Callable[[], T], what: str) -> T:
        """A retried Lance write; a failure that is not a conflict becomes one StoreWriteError line."""
        try:
            return retry(op, what)
        except LANCE_ERRORS as exc:
            remote = remote_failure(exc, self.reader.location)
            if remote is not None:
                raise remote from exc
            raise StoreWriteError(
                f"cannot write {what} to store {self.uri} ({reason(exc)}): free space or fix the storage "
                "and rerun; slides committed before stay intact"
            ) from exc

    def add_slide(self, record: dict[str, Any], tiles: pd.DataFrame, embeddings: np.ndarray) -> None:
        """Commit a slide's tiles [N] and embeddings [N, dim] atomically and mark it done."""
        self.guard()
        slide_id = str(record["slide_id"])
        dim = self.fingerprint.embed_dim
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != dim or embeddings.shape[0] != len(tiles):
            raise StoreError(
                f"slide {slide_id}: embeddings of shape {embeddings.shape} do not match {len(tiles)} tiles "
                f"x dim {dim} of store {self.uri}"
            )
        if not np.isfinite(embeddings).all():
            raise StoreError(f"slide {slide_id}: embeddings contain NaN or inf; the slide was not stored")
        missing = [c for c in TILE_INPUT_COLUMNS if c not in tiles.columns]
        if missing:
            raise StoreError(f"slide {slide_id}: tiles frame lacks columns {missing}")
        if tiles["tile_id"].duplicated().any():
            raise StoreError(f"slide {slide_id}: duplicate tile ids; tile ids must be unique")
        attrs = attrs_json(record, slide_id)
        commit = new_commit()
        table = self.tiles_table(slide_id, tiles, embeddings, commit)
        checksum = embedding_checksum(table.column("tile_id"), table.column("embedding"))
        previous = self.reader.slide_row(slide_id)
        self.append_tiles(slide_id, table)
        row = self.slide_record(record, status=DONE, error="", n_tiles=len(table))
        self.upsert_slide(row, commit=commit, checksum=checksum, attrs=attrs)
        self.drop_stale_tiles(
            slide_id, keep=commit, superseded=None if previous is None else previous["commit"]
        )

    def append_tiles(self, slide_id: str, table: pa.Table) -> None:
        """Append a slide's tiles (invisible until its slides row names their commit)."""
        if len(table):
            self.write(lambda: self.tables.tiles.add(table), f"the tiles of slide {slide_id}")
            if self._tile_commits is not None:
                self.tile_commits(slide_id).update(table.column("commit").unique().to_pylist())

    def drop_stale_tiles(self, slide_id: str, keep: str, superseded: str | None) -> None:
        """Delete a slide's superseded tiles and its invisible leftovers older than an hour (best effort)."""
        tiles = self.tables.tiles
        commits = self.tile_commits(slide_id)
        stale = {c for c in commits if c != keep and commit_age_s(c) > ORPHAN_AGE_S}
        if superseded is not None and superseded != keep:
            stale.add(superseded)
        if not stale:
            return
        where = f"slide_id = {quote(slide_id)} AND commit IN ({', '.join(map(quote, sorted(stale)))})"
        try:
            retry(lambda: tiles.delete(where), f"delete stale tiles of {slide_id}")
        except LANCE_ERRORS as exc:
            log.warning("store %s: stale tiles of %s kept (%s); they are invisible", self.uri, slide_id, exc)
            return
        commits -= stale

    def add_failed_slide(self, record: dict[str, Any], error: str) -> bool:
        """Record a slide that could not be embedded; a done slide keeps its tiles (returns False then)."""
        self.guard()
        slide_id = str(record["slide_id"])
        previous = self.reader.slide_row(slide_id)
        if previous is not None and previous["status"] == DONE:
            log.info("slide %s: re-embedding failed (%s); its committed tiles are kept", slide_id, error)
            return False
        row = self.slide_record(record, status=FAILED, error=error, n_tiles=0)
        self.upsert_slide(row, commit=None, checksum=None, attrs=attrs_json(record, slide_id))
        return True

    def tiles_table(
        self, slide_id: str, tiles: pd.DataFrame, embeddings: np.ndarray, commit: str
    ) -> pa.Table:
        """A slide's tile rows as the `tiles` table stores them, under `commit`."""
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
        return pa.table(columns, schema=tiles_schema(fp.embed_dim, fp.embedding_dtype))

    def slide_record(self, record: dict[str, Any], status: str, error: str, n_tiles: int) -> dict[str, Any]:
        """A slides row for `record` with the store's model, this mvh and the time."""
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
            timestamp=now(),
        )
        for name in ("mpp", "seconds"):
            if row[name] is not None and not math.isfinite(float(row[name])):
                row[name] = None
        return row

    def upsert_slide(
        self, row: dict[str, Any], commit: str | None, checksum: str | None, attrs: str | None
    ) -> None:
        """Insert or replace a slide's row: the one write that switches readers to its tiles."""
        slides = self.tables.slides
        names = slides.schema.names
        column = OLD_SLIDE_ATTRS if OLD_SLIDE_ATTRS in names else SLIDE_ATTRS  # a store written before 0.2
        values = {k: v for k, v in row.items() if k != SLIDE_ATTRS}
        values.update(commit=commit, checksum=checksum, **{column: attrs})
        table = pa.Table.from_pylist([values], schema=slides_schema(names))
        self.write(
            lambda: (
                slides.merge_insert("slide_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(table)
            ),
            f"the slides row of {row['slide_id']}",
        )

    def set_meta(self, key: str, value: Any) -> None:
        """Write one JSON-able value into the meta table (replacing the key's old value)."""
        self.guard()
        if key == "fingerprint":
            raise StoreError("the fingerprint of a store is never rewritten")
        row = pa.table({"key": [key], "value": [json.dumps(value, allow_nan=False)]}, schema=META_SCHEMA)
        meta = self.tables.meta
        retry(
            lambda: (
                meta.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(row)
            ),
            f"meta key {key}",
        )

    def optimize(self) -> None:
        """Compact the tiles table and keep BTREE indexes on slide_id and tile_id current (old versions kept).

        Per-slide reads and `rows_by_tile_ids` filter on these columns; without an index each filter scans
        the column. A failure here (e.g. a conflict with another process still writing) is only logged:
        the store stays correct, merely slower to read.
        """
        tiles = self.tables.tiles
        try:
            indexed = {tuple(ix.columns) for ix in tiles.list_indices()}
            for column in ("slide_id", "tile_id"):
                if (column,) not in indexed and tiles.count_rows():
                    retry(lambda c=column: tiles.create_index(c, config=BTree()), f"index {column}")
            retry(tiles.optimize, "optimize tiles")
            retry(self.tables.slides.optimize, "optimize slides")
        except LANCE_ERRORS as exc:
            log.warning("store %s: optimisation skipped (%s); reads stay correct", self.uri, exc)
