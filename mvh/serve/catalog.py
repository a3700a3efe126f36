"""The stores the app serves, looked up by name; slides looked up by id in the store's own table.

Nothing a request sends is used as a path: a store is one of the names given at start-up, a slide is a
row of that store's `slides` table, and its file is the path recorded there.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mvh.errors import UsageError
from mvh.extractor.embedder import Embedder
from mvh.extractor.weights_places import local_weights
from mvh.index.faiss_index import VectorIndex
from mvh.index.index_files import load_index
from mvh.serve.batcher import MicroBatcher
from mvh.store import DONE, RANDOM_INIT, EmbeddingStore
from mvh.store.location import parse_location
from mvh.tasks.query import ImageQuery, QueryResult, image_query_results
from mvh.tasks.query_embedder import query_embedder

# The FAISS flat (exact) search computes queries on their own below 20 at once (BLAS above); keeping
# batches under it keeps a batched query's scores those of a lone one.
MAX_BATCH = 16


class NotFound(UsageError):
    """A store, slide or tile named by a request does not exist (HTTP 404)."""


@dataclass(frozen=True)
class SlideRecord:
    """Where a done slide's file is and how to open it (from the store's `slides` table)."""

    slide_id: str
    path: Path | None
    mpp: float | None
    user_mpp: float | None
    width: int | None
    height: int | None
    n_tiles: int
    mpp_source: str | None = None
    file_hash: str | None = None


def _store_name(uri: str) -> str:
    name = Path(uri.rstrip("/")).name or uri
    return name.removesuffix(".lance") or name


def _optional_int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def location_of(source: str) -> dict[str, Any]:
    """Where a served store lives: local / S3 / Google Cloud / Azure, its URI, and the tag or version."""
    location = parse_location(source, read_only=True)
    kind = {"s3": "S3", "s3+ddb": "S3", "gs": "Google Cloud", "az": "Azure", "abfs": "Azure",
            "memory": "memory"}.get(location.scheme, "local")
    return {"kind": kind, "uri": location.uri, "tag": location.tag, "pinned_version": location.version}


class StoreEntry:
    """One served store: its name, the opened store, a cached slide table, and, built on first use, its
    embedder, its vector index and the batcher that runs concurrent image queries together."""

    def __init__(
        self, name: str, store: EmbeddingStore, source: str, max_batch: int = MAX_BATCH,
        batch_wait_s: float = 0.002, torch_threads: int = 1,
    ) -> None:
        self.name = name
        self.store = store
        self.source = source  # the --store text (URI[@tag]): what stored-tile searches reopen
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._slides: tuple[int, dict[str, SlideRecord]] | None = None
        self._tiles: dict[str, np.ndarray] = {}
        self._embedder: Embedder | None = None
        self._index: VectorIndex | None = None
        self.image_batcher: MicroBatcher[tuple[np.ndarray, ImageQuery], QueryResult] = MicroBatcher(
            self._search_images, max_batch=max_batch, max_wait_s=batch_wait_s, name=f"mvh-search-{name}",
            on_start=lambda: torch.set_num_threads(torch_threads),  # OpenMP: this thread's forwards only
        )

    def image_queries(self) -> tuple[bool, str]:
        """(whether an uploaded image can be embedded here, why not)."""
        fp = self.store.fingerprint
        if fp.model.startswith("external:"):
            return False, f"model {fp.model} was imported from another tool and cannot embed images here"
        if fp.weights_sha256 == RANDOM_INIT:
            return True, ""
        if local_weights(fp.weights_sha256, fp.weights_path) is None:
            return False, (
                f"the weights file this store was made with ({fp.weights_path}, sha256 "
                f"{fp.weights_sha256[:12]}...) is not on this machine: query by stored tile (SLIDE:X:Y) only"
            )
        return True, ""

    def embedder(self) -> Embedder:
        """The store's own model, built once (FingerprintMismatchError/CheckpointError as `mvh search`)."""
        with self._lock:
            if self._embedder is None:
                self._embedder = query_embedder(self.store)
            return self._embedder

    def index(self) -> VectorIndex:
        """The store's vector index, loaded once: the served handle is read-only, a snapshot of the store
        as it was at start-up (IndexNotFoundError / StaleIndexError as `mvh search`)."""
        with self._index_lock:
            if self._index is None:
                self._index = load_index(self.store)
            return self._index

    def _search_images(self, queries: list[tuple[np.ndarray, ImageQuery]]) -> list[QueryResult]:
        # one forward of the stacked tiles [B, tile_px, tile_px, 3], one index search per k
        embedder, index = self.embedder(), self.index()
        embeddings = embedder.embed_images(np.stack([tile for tile, _ in queries]), batch_size=len(queries))
        return image_query_results(self.store, index, embeddings, [query for _, query in queries])

    def search_image(self, tile: np.ndarray, query: ImageQuery) -> QueryResult:
        """Hits of a query tile already cut to the store's tile (`prepare_query_image`), batched with the
        image queries that arrive at the same time."""
        return self.image_batcher((tile, query))

    def close(self) -> None:
        """Stop the image-query worker."""
        self.image_batcher.close()

    def slide_records(self) -> dict[str, SlideRecord]:
        """Done slides by id, re-read when the store's version changes."""
        version = self.store.version
        with self._lock:
            if self._slides is not None and self._slides[0] == version:
                return self._slides[1]
        frame = self.store.slides(status=DONE)
        records = {}
        for row in frame.to_dict(orient="records"):
            path = row.get("path")
            mpp = None if row.get("mpp") is None or pd.isna(row["mpp"]) else float(row["mpp"])
            records[str(row["slide_id"])] = SlideRecord(
                slide_id=str(row["slide_id"]),
                path=Path(path) if isinstance(path, str) and path else None,
                mpp=mpp,
                user_mpp=mpp if row.get("mpp_source") == "user" else None,
                width=_optional_int(row.get("width")),
                height=_optional_int(row.get("height")),
                n_tiles=int(row.get("n_tiles") or 0),
                mpp_source=_optional_str(row.get("mpp_source")),
                file_hash=_optional_str(row.get("file_hash")),
            )
        with self._lock:
            self._slides = (version, records)
            self._tiles = {}
        return records

    def slide(self, slide_id: str) -> SlideRecord:
        """The done slide `slide_id` (NotFound otherwise)."""
        record = self.slide_records().get(slide_id)
        if record is None:
            raise NotFound(f"slide {slide_id!r} is not a done slide of store {self.name!r}")
        return record

    def tile_coords(self, slide_id: str) -> np.ndarray:
        """Level-0 top-left (x, y) [N, 2] of the slide's stored tiles, ordered by (y, x)."""
        self.slide(slide_id)
        with self._lock:
            cached = self._tiles.get(slide_id)
        if cached is not None:
            return cached
        tiles = self.store.slide_tiles(slide_id)
        coords = tiles[["x", "y"]].to_numpy(np.int64)
        with self._lock:
            self._tiles[slide_id] = coords
        return coords

    def require_tile(self, slide_id: str, x: int, y: int) -> None:
        """NotFound unless (x, y) is the top-left of a stored tile of the slide."""
        coords = self.tile_coords(slide_id)
        if not ((coords[:, 0] == x) & (coords[:, 1] == y)).any():
            raise NotFound(f"no stored tile at ({x}, {y}) in slide {slide_id!r} of store {self.name!r}")

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for `/api/stores`."""
        fp = self.store.fingerprint
        ok, why = self.image_queries()
        info = self.store.info()
        return {
            "name": self.name,
            "uri": self.store.uri,
            "version": info.version,
            "model": fp.model,
            "weights_sha256": fp.weights_sha256,
            "embed_dim": fp.embed_dim,
            "tile_px": fp.tile_px,
            "mpp": fp.mpp,
            "n_slides": info.n_slides,
            "n_tiles": info.n_tiles,
            "slides_by_status": info.slides_by_status,
            "image_queries": ok,
            "image_queries_reason": why,
            "image_batches": self.image_batcher.stats(),
            "fingerprint": info.fingerprint.to_dict(),
            "mvh_version": info.mvh_version,
            "created": info.created,
            "opened_as": info.opened_as,
            "tags": info.tags,
            "versions": info.table_versions,
            "card": info.card_fields,
            "location": location_of(self.source),
        }


class Catalog:
    """The served stores by name (the store folders' names, `-TAG` for a pinned tag, made unique);
    each opened read-only."""

    def __init__(
        self, uris: list[str], max_batch: int = MAX_BATCH, batch_wait_s: float = 0.002, torch_threads: int = 1
    ) -> None:
        self.entries: dict[str, StoreEntry] = {}
        for uri in uris:
            location = parse_location(str(uri), read_only=True)
            base = _store_name(location.uri) + (f"-{location.tag}" if location.tag else "")
            name, n = base, 1
            while name in self.entries:
                n += 1
                name = f"{base}-{n}"
            self.entries[name] = StoreEntry(
                name, EmbeddingStore.open(location), str(uri), max_batch=max_batch, batch_wait_s=batch_wait_s,
                torch_threads=torch_threads,
            )

    def close(self) -> None:
        """Stop every store's image-query worker (the app's shutdown)."""
        for entry in self.entries.values():
            entry.close()

    def get(self, name: str | None) -> StoreEntry:
        """The store called `name`; with None, the only store (UsageError when there are several)."""
        if name is None or name == "":
            if len(self.entries) == 1:
                return next(iter(self.entries.values()))
            raise UsageError(f"several stores are served: name one with store= ({', '.join(self.entries)})")
        entry = self.entries.get(name)
        if entry is None:
            raise NotFound(f"no store named {name!r}; served stores: {', '.join(self.entries)}")
        return entry

    def holding(self, slide_id: str, name: str | None) -> StoreEntry:
        """The store named `name`, or the only one holding `slide_id` (NotFound / UsageError otherwise)."""
        if name:
            return self.get(name)
        owners = [e for e in self.entries.values() if slide_id in e.slide_records()]
        if not owners:
            raise NotFound(f"slide {slide_id!r} is in none of the served stores")
        if len(owners) > 1:
            raise UsageError(
                f"slide {slide_id!r} is in several stores ({', '.join(e.name for e in owners)}): add store="
            )
        return owners[0]
