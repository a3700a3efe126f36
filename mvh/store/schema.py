"""What a store holds: its tables and their Arrow schemas, the fingerprint that binds it to one model, and
the conversions of embeddings to and from Arrow with the checksum recorded at commit.

Three tables: `tiles` (one row per embedded tile: slide_id, tile_id, x, y at level 0, tile_px, mpp,
tissue_fraction, model, weights_sha256, commit, embedding fixed_size_list<float32|float16>[dim]),
`slides` (one row per slide: path, size, file_hash, level-0 dims, mpp and its source, status done|failed,
error, n_tiles, seconds, model, weights, mvh_version, timestamp, commit, checksum, slide_attrs) and `meta`
(key/value rows with JSON values: `fingerprint`, `mvh_version`, `created`, and optional keys like `card`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mvh.core.jsonio import json_round_trip
from mvh.errors import StoreError

TILES = "tiles"
SLIDES = "slides"
META = "meta"
DONE = "done"
FAILED = "failed"
RANDOM_INIT = "random-init"
DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
# Columns a caller's tiles frame must hold for `add_slide` (the store adds the rest).
TILE_INPUT_COLUMNS = ("tile_id", "x", "y", "tile_px", "mpp", "tissue_fraction")


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
        if self.embedding_dtype not in DTYPES:
            raise StoreError(
                f"embedding dtype {self.embedding_dtype!r} is not supported: use float32 or float16"
            )
        object.__setattr__(self, "model_config", json_round_trip(dict(self.model_config)))
        object.__setattr__(self, "extra", json_round_trip(dict(self.extra)))
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

    def shared(self) -> StoreFingerprint:
        """This fingerprint without local paths, as `mvh info`, cards and exports show it: the weights
        file's name (its sha256 names the weights) and the name of the folder features were imported from."""
        extra = dict(self.extra)
        if isinstance(extra.get("imported_from"), str):
            extra["imported_from"] = PurePath(extra["imported_from"]).name
        weights = None if self.weights_path is None else PurePath(self.weights_path).name
        return dataclasses.replace(self, weights_path=weights, extra=extra)

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
            pa.field("embedding", pa.list_(DTYPES[dtype], dim), nullable=False),
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
        pa.field("slide_attrs", pa.string()),
    ]
)
SLIDE_ATTRS = "slide_attrs"  # per-slide JSON object of extra attributes (import, ST identity)
# Its name in stores written before 0.2: renamed because it clashed with pandas' `DataFrame.attrs`. Such
# stores keep their column; readers see it as `slide_attrs`, writers write it under its stored name.
OLD_SLIDE_ATTRS = "attrs"


def slides_schema(stored_names: list[str]) -> pa.Schema:
    """The slides schema of a table whose columns are `stored_names` (the attrs column under its name)."""
    if OLD_SLIDE_ATTRS in stored_names:
        index = SLIDES_SCHEMA.get_field_index(SLIDE_ATTRS)
        return SLIDES_SCHEMA.set(index, pa.field(OLD_SLIDE_ATTRS, pa.string()))
    return SLIDES_SCHEMA


META_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())])


def embeddings_to_numpy(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed_size_list<float>[dim] column as a float32 array [N, dim] (no Python loop)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(-1, dim), dtype=np.float32)


def embeddings_to_arrow(embeddings: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """A float array [N, dim] as a fixed_size_list<dtype>[dim] Arrow array."""
    flat = np.ascontiguousarray(embeddings, dtype=np.dtype(dtype)).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=DTYPES[dtype]), embeddings.shape[1])


def embedding_checksum(tile_ids: pa.Array | pa.ChunkedArray, embedding: pa.Array | pa.ChunkedArray) -> str:
    """`sha256:<hex>` of a slide's embedding values as stored (little-endian), rows in tile_id order."""
    if isinstance(tile_ids, pa.ChunkedArray):
        tile_ids = tile_ids.combine_chunks() if tile_ids.num_chunks else pa.array([], pa.string())
    if isinstance(embedding, pa.ChunkedArray):
        embedding = embedding.combine_chunks() if embedding.num_chunks else pa.array([], embedding.type)
    values = embedding.take(pc.sort_indices(tile_ids)).flatten().to_numpy(zero_copy_only=False)
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(little).tobytes()).hexdigest()
