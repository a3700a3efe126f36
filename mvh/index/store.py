"""The embedding store: one LanceDB database (a directory or any URI `lancedb.connect` accepts).

Layout (three tables):

- `tiles`: one row per embedded tile (slide_id, tile_id, x, y at level 0, tile_px, mpp, tissue_fraction,
  model, weights_sha256, embedding fixed_size_list<float32|float16>[dim]).
- `slides`: one row per slide (path, size, level-0 dims, mpp and its source, status done|failed, error,
  n_tiles, seconds, model, weights, mvh_version, timestamp).
- `meta`: key/value rows (JSON values): `fingerprint` (model name + config, preprocessing, weights sha256,
  dim, dtype), `mvh_version` and `created` of the store. It is written last on creation, so a directory
  without it is not a store.

Commit protocol: a slide's tiles are written in ONE Lance commit, then its `done` row in the slides
table. Readers only trust tiles of slides whose row is `done`, so a crash between the two writes leaves
no visible half slide; the next `add_slide` of that slide deletes the orphan tiles before appending.
Re-embedding a slide that is already done replaces its tiles in one `merge_insert` commit, so a reader
sees the old or the new tiles, never a mixture. Several processes may write to one store at once: Lance
appends do not conflict, and any commit conflict (e.g. two upserts of the slides table racing) is retried.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
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
from mvh.errors import FingerprintMismatchError, StoreError, StoreNotFoundError

log = logging.getLogger(__name__)

TILES = "tiles"
SLIDES = "slides"
META = "meta"
INDEX_DIRNAME = "_index"
RANDOM_INIT = "random-init"
DONE = "done"
FAILED = "failed"
_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
_TILE_INPUT_COLUMNS = ("tile_id", "x", "y", "tile_px", "mpp", "tissue_fraction")
_COMMIT_RETRIES = 8
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
            pa.field("embedding", pa.list_(_DTYPES[dtype], dim), nullable=False),
        ]
    )


SLIDES_SCHEMA = pa.schema(
    [
        pa.field("slide_id", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("size", pa.int64()),
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
    ]
)

META_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())])


def _quote(value: str) -> str:
    """A SQL string literal for a Lance filter."""
    return "'" + str(value).replace("'", "''") + "'"


def _is_commit_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return "conflict" in text or "retryable" in text


def _retry(op: Callable[[], T], what: str) -> T:
    """Run a Lance write, retrying on commit conflicts with concurrent writers."""
    for attempt in range(_COMMIT_RETRIES):
        try:
            return op()
        except (OSError, RuntimeError, ValueError) as exc:
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


def _now() -> datetime:
    return datetime.now(timezone.utc)


class EmbeddingStore:
    """A LanceDB store of tile embeddings bound to one `StoreFingerprint`."""

    def __init__(self, uri: str, db: Any, fingerprint: StoreFingerprint, meta: dict[str, Any]) -> None:
        self.uri = uri
        self._db = db
        self.fingerprint = fingerprint
        self.meta = meta
        self._tiles = db.open_table(TILES)
        self._slides = db.open_table(SLIDES)

    # ---------------------------------------------------------------- opening
    @staticmethod
    def _connect(uri: str | Path) -> Any:
        # Consistency interval 0: every read sees commits made by other processes.
        return lancedb.connect(str(uri), read_consistency_interval=timedelta(0))

    @staticmethod
    def _table_names(db: Any) -> set[str]:
        names: set[str] = set()
        token = None
        while True:
            page = db.list_tables(page_token=token)
            names.update(page.tables)
            token = page.page_token
            if not token:
                return names

    @classmethod
    def exists(cls, uri: str | Path) -> bool:
        """True when a complete store (with its `meta` table) is at `uri`."""
        if "://" not in str(uri) and not Path(uri).exists():
            return False
        return META in cls._table_names(cls._connect(uri))

    @classmethod
    def open(cls, uri: str | Path) -> EmbeddingStore:
        """Open an existing store (StoreNotFoundError if there is none at `uri`)."""
        uri = str(uri)
        if not cls.exists(uri):
            raise StoreNotFoundError(
                f"no embedding store at {uri}: create one with `mvh extract ... --store {uri}`"
            )
        db = cls._connect(uri)
        rows = db.open_table(META).to_arrow().to_pylist()
        meta = {row["key"]: json.loads(row["value"]) for row in rows}
        if "fingerprint" not in meta:
            raise StoreError(
                f"store {uri} has no fingerprint in its meta table: it is damaged; re-extract it"
            )
        return cls(uri, db, StoreFingerprint.from_dict(meta["fingerprint"]), meta)

    @classmethod
    def create(cls, uri: str | Path, fingerprint: StoreFingerprint) -> EmbeddingStore:
        """Create a new empty store at `uri` bound to `fingerprint` (StoreError if one exists)."""
        uri = str(uri)
        if cls.exists(uri):
            raise StoreError(f"a store already exists at {uri}: open it, or choose another --store path")
        db = cls._connect(uri)
        schema = tiles_schema(fingerprint.embed_dim, fingerprint.embedding_dtype)
        db.create_table(TILES, data=schema.empty_table(), exist_ok=True)
        db.create_table(SLIDES, data=SLIDES_SCHEMA.empty_table(), exist_ok=True)
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
        except (OSError, RuntimeError, ValueError) as exc:
            # Another process created the store between our check and now: use theirs if it agrees.
            if META not in cls._table_names(db):
                raise StoreError(f"cannot create the store at {uri}: {exc}") from exc
            return cls._checked(cls.open(uri), fingerprint)
        store = cls(uri, db, fingerprint, meta)
        if store._tiles.schema.field("embedding").type != schema.field("embedding").type:
            raise StoreError(f"store {uri} has a tiles table of another shape: choose another --store path")
        return store

    @classmethod
    def open_or_create(cls, uri: str | Path, fingerprint: StoreFingerprint) -> EmbeddingStore:
        """Open the store at `uri` if it matches `fingerprint`, else create it (FingerprintMismatchError)."""
        if cls.exists(uri):
            return cls._checked(cls.open(uri), fingerprint)
        return cls.create(uri, fingerprint)

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

    @property
    def index_dir(self) -> Path:
        """The folder inside the store where vector indexes live (local stores only)."""
        if "://" in self.uri and not self.uri.startswith("file://"):
            raise StoreError(f"store {self.uri} is remote: build vector indexes from a local copy")
        return Path(self.uri.removeprefix("file://")) / INDEX_DIRNAME

    def schema(self) -> dict[str, pa.Schema]:
        """Arrow schemas of the tables."""
        return {TILES: self._tiles.schema, SLIDES: self._slides.schema}

    # ---------------------------------------------------------------- writing
    def add_slide(self, record: dict[str, Any], tiles: pd.DataFrame, embeddings: np.ndarray) -> None:
        """Commit a slide's tiles [N] and embeddings [N, dim] atomically and mark it done."""
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
        table = self._tiles_table(slide_id, tiles, embeddings)
        where = f"slide_id = {_quote(slide_id)}"
        previous = self._slide_row(slide_id)
        if previous is not None and previous["status"] == DONE:
            # Replace a visible slide in one commit so readers never see it half-written.
            _retry(
                lambda: (
                    self._tiles.merge_insert("tile_id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .when_not_matched_by_source_delete(where)
                    .execute(table)
                ),
                f"replace tiles of {slide_id}",
            )
        else:
            if self._tiles.count_rows(where):
                log.info("slide %s: deleting orphan tiles of an interrupted run", slide_id)
                _retry(lambda: self._tiles.delete(where), f"delete orphans of {slide_id}")
            if len(table):
                _retry(lambda: self._tiles.add(table), f"append tiles of {slide_id}")
        row = self._slide_record(record, status=DONE, error="", n_tiles=len(table))
        self._upsert_slide(row)

    def add_failed_slide(self, record: dict[str, Any], error: str) -> None:
        """Record a slide that could not be embedded (its tiles, if any, are removed)."""
        slide_id = str(record["slide_id"])
        self._upsert_slide(self._slide_record(record, status=FAILED, error=error, n_tiles=0))
        where = f"slide_id = {_quote(slide_id)}"
        if self._tiles.count_rows(where):
            _retry(lambda: self._tiles.delete(where), f"delete tiles of failed {slide_id}")

    def _tiles_table(self, slide_id: str, tiles: pd.DataFrame, embeddings: np.ndarray) -> pa.Table:
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
            "embedding": embeddings_to_arrow(embeddings, fp.embedding_dtype),
        }
        return pa.table(columns, schema=tiles_schema(self.dim, fp.embedding_dtype))

    def _slide_record(self, record: dict[str, Any], status: str, error: str, n_tiles: int) -> pa.Table:
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
        return pa.Table.from_pylist([row], schema=SLIDES_SCHEMA)

    def _upsert_slide(self, row: pa.Table) -> None:
        _retry(
            lambda: (
                self._slides.merge_insert("slide_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(row)
            ),
            "slides row",
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
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("store %s: optimisation skipped (%s); reads stay correct", self.uri, exc)

    def _slide_row(self, slide_id: str) -> dict[str, Any] | None:
        rows = self._slides.search().where(f"slide_id = {_quote(slide_id)}").to_arrow().to_pylist()
        return rows[0] if rows else None

    # ---------------------------------------------------------------- reading
    def slides(self, status: str | None = None) -> pd.DataFrame:
        """One row per slide (sorted by slide_id), optionally only those with `status`."""
        query = self._slides.search()
        if status is not None:
            query = query.where(f"status = {_quote(status)}")
        frame = query.to_arrow().to_pandas()
        return frame.sort_values("slide_id", kind="stable").reset_index(drop=True)

    def slide_ids(self, status: str | None = DONE) -> list[str]:
        """Sorted ids of slides with `status` (all slides when None)."""
        query = self._slides.search().select(["slide_id"])
        if status is not None:
            query = query.where(f"status = {_quote(status)}")
        return sorted(query.to_arrow().column("slide_id").to_pylist())

    def _require_done(self, slide_id: str) -> None:
        row = self._slide_row(slide_id)
        if row is None or row["status"] != DONE:
            state = "absent" if row is None else row["status"]
            raise StoreError(f"slide {slide_id} is {state} in store {self.uri}: list slides with `mvh info`")

    def _read_tiles(self, where: str | None, columns: Sequence[str]) -> pa.Table:
        query = self._tiles.search()
        if where is not None:
            query = query.where(where)
        wanted = list(dict.fromkeys([*columns, "slide_id", "x", "y", "tile_id"]))
        table = query.select(wanted).to_arrow()
        order = pc.sort_indices(
            table,
            sort_keys=[
                ("slide_id", "ascending"),
                ("y", "ascending"),
                ("x", "ascending"),
                ("tile_id", "ascending"),
            ],
        )
        return table.take(order)

    def slide_tiles(self, slide_id: str) -> pd.DataFrame:
        """A done slide's tile rows (no embeddings), ordered by (y, x)."""
        self._require_done(slide_id)
        columns = [n for n in self._tiles.schema.names if n != "embedding"]
        return self._read_tiles(f"slide_id = {_quote(slide_id)}", columns).select(columns).to_pandas()

    def slide_embeddings(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A done slide's embeddings [N, dim] float32 and level-0 coords [N, 2] int64 (x, y), by (y, x)."""
        self._require_done(slide_id)
        table = self._read_tiles(f"slide_id = {_quote(slide_id)}", ["embedding"])
        return self._split(table)

    def _split(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        emb = embeddings_to_numpy(table.column("embedding"), self.dim)
        coords = np.stack([table.column("x").to_numpy(), table.column("y").to_numpy()], axis=1)
        return emb, coords.astype(np.int64, copy=False)

    def iter_slides(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield (slide_id, embeddings [N, dim], coords [N, 2]) for each done slide in id order."""
        for slide_id in self.slide_ids(DONE):
            table = self._read_tiles(f"slide_id = {_quote(slide_id)}", ["embedding"])
            emb, coords = self._split(table)
            yield slide_id, emb, coords

    def all_embeddings(
        self, columns: Sequence[str] = ("slide_id", "tile_id", "x", "y", "tile_px", "mpp")
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Rows (chosen columns) and embeddings [N, dim] float32 of all done tiles, by (slide_id, y, x)."""
        done = self.slide_ids(DONE)
        table = self._read_tiles(None, [*columns, "embedding"])
        table = table.filter(pc.is_in(table.column("slide_id"), value_set=pa.array(done, pa.string())))
        emb = embeddings_to_numpy(table.column("embedding"), self.dim)
        return table.select(list(columns)).to_pandas(), emb

    def rows_by_tile_ids(self, tile_ids: Sequence[str], with_embeddings: bool = False) -> pd.DataFrame:
        """Tile rows of done slides in the order of `tile_ids` (StoreError naming any missing id)."""
        columns = [n for n in self._tiles.schema.names if with_embeddings or n != "embedding"]
        wanted = list(dict.fromkeys(str(t) for t in tile_ids))
        parts = []
        for start in range(0, len(wanted), 1000):
            chunk = ", ".join(_quote(t) for t in wanted[start : start + 1000])
            parts.append(self._tiles.search().where(f"tile_id IN ({chunk})").select(columns).to_arrow())
        table = pa.concat_tables(parts) if parts else self._tiles.schema.empty_table().select(columns)
        done = pa.array(self.slide_ids(DONE), pa.string())
        table = table.filter(pc.is_in(table.column("slide_id"), value_set=done))
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
            frame["embedding"] = list(embeddings_to_numpy(table.column("embedding"), self.dim))
        return frame

    def info(self) -> dict[str, Any]:
        """A JSON-ready description: fingerprint, counts, slides by status, schemas."""
        slides = self.slides()
        counts = slides["status"].value_counts().to_dict() if len(slides) else {}
        return {
            "uri": self.uri,
            "version": self.version,
            "fingerprint": self.fingerprint.to_dict(),
            "mvh_version": self.meta.get("mvh_version"),
            "created": self.meta.get("created"),
            "n_slides": len(slides),
            "slides_by_status": {str(k): int(v) for k, v in counts.items()},
            "n_tiles": int(slides.loc[slides["status"] == DONE, "n_tiles"].sum()) if len(slides) else 0,
            "schema": {name: [f"{f.name}: {f.type}" for f in s] for name, s in self.schema().items()},
        }
