"""Queries against a store: an image, a stored tile or a whole slide; results as rows and a montage PNG.

This module holds the result, the stored-tile references and the search job. A query image is brought
to the store's physical tile size by `mvh.tasks.query_image` and embedded with exactly the store's model
by `mvh.tasks.query_embedder`; the montage PNG is drawn by `mvh.tasks.query_montage`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvh.errors import MvhError, UsageError
from mvh.extractor.embedder import Embedder
from mvh.extractor.slide import open_slide
from mvh.index.faiss_index import VectorIndex
from mvh.index.index_files import load_index
from mvh.index.ranking import representative_tiles, search, search_slides
from mvh.progress import STEPS, Event, Progress, report
from mvh.store import EmbeddingStore
from mvh.tasks.query_embedder import embed_query_image
from mvh.tasks.query_image import load_image
from mvh.tasks.query_montage import read_stored_tile, write_montage

log = logging.getLogger(__name__)


@dataclass
class QueryResult:
    """Hits of a query (tile rows, or ranked slides when `slide_level`) with notes for the user."""

    hits: pd.DataFrame
    slide_level: bool
    query: dict[str, Any]
    index: str
    notes: list[str] = field(default_factory=list)
    montage: Path | None = None
    store: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (hits as a list of records)."""
        return {
            "store": self.store,
            "query": self.query,
            "slide_level": self.slide_level,
            "index": self.index,
            "notes": self.notes,
            "montage": None if self.montage is None else str(self.montage),
            "hits": self.hits.to_dict(orient="records"),
        }


# ---------------------------------------------------------------------------- stored queries
def tile_ref_candidates(text: str) -> list[tuple[str, int, int]]:
    """Readings of a tile reference as (slide_id, x, y): the tile id `--json` prints
    (`<slide_id>:<x>:<y>:<size>`) first, then `<slide_id>:<x>:<y>` (slide ids may contain colons)."""
    out = []
    for fields in (4, 3):
        parts = text.rsplit(":", fields - 1)
        if len(parts) != fields or not parts[0]:
            continue
        try:
            numbers = [int(p) for p in parts[1:]]
        except ValueError:
            continue
        out.append((parts[0], numbers[0], numbers[1]))
    return out


def parse_tile_ref(text: str) -> tuple[str, int, int]:
    """Parse a tile id `<slide_id>:<x>:<y>:<size>` or `<slide_id>:<x>:<y>` (level-0 px) -> (slide, x, y)."""
    candidates = tile_ref_candidates(text)
    if not candidates:
        raise UsageError(
            f"--query-tile {text!r} is not <slide_id>:<x>:<y> (level-0 pixels, e.g. slide1:448:896) "
            "or a tile id as `--json` prints it (slide1:448:896:448)"
        )
    return candidates[0]


def resolve_tile_ref(store: EmbeddingStore, index: VectorIndex, text: str) -> tuple[str, int, int, str, int]:
    """(slide_id, x, y, tile_id, index row) of the stored tile `text` names: an exact tile id of the
    index, or the first reading of `tile_ref_candidates` that names a tile; UsageError naming the
    nearest tile else.

    Each reading is looked up by (slide, x, y) in the part that holds the slide (`RowSource.find`); the
    tile id itself (one pass over every tile id: 0.4 s at 10M tiles) only when no reading names a tile.
    """
    readings = tile_ref_candidates(text)
    named: list[tuple[str, int, int, str, int]] = []
    for slide_id, x, y in readings:
        row = index.rows.find(slide_id, x, y)
        if row >= 0:
            tile_id = str(index.rows.take(np.array([row])).iloc[0]["tile_id"])
            if tile_id == text:
                return slide_id, x, y, tile_id, row
            named.append((slide_id, x, y, tile_id, row))
    if not named:  # a tile id of another form: looked up as such
        row = int(index.tile_rows([text])[0])
        if row >= 0:
            hit = index.rows.take(np.array([row])).iloc[0]
            return str(hit["slide_id"]), int(hit["x"]), int(hit["y"]), str(hit["tile_id"]), row
    parse_tile_ref(text)
    if named:
        return named[0]
    slide_id, x, y = readings[-1]
    tile_embedding(store, slide_id, x, y)  # raises with the nearest stored tile
    raise UsageError(f"--query-tile {text!r} is not in the index of {store.uri}: run `mvh index build`")


def _require_slide(store: EmbeddingStore, slide_id: str) -> None:
    if slide_id not in store.slide_ids():
        raise UsageError(
            f"slide {slide_id!r} is not a done slide of store {store.uri}: list them with `mvh info`"
        )


def tile_embedding(store: EmbeddingStore, slide_id: str, x: int, y: int) -> np.ndarray:
    """The stored embedding [1, dim] of the tile of `slide_id` whose top-left is (x, y)."""
    _require_slide(store, slide_id)
    emb, coords = store.slide_embeddings(slide_id)
    match = np.flatnonzero((coords[:, 0] == x) & (coords[:, 1] == y))
    if match.size == 0:
        nearest = coords[np.argmin(np.abs(coords - np.array([x, y])).sum(axis=1))]
        raise UsageError(
            f"no tile at ({x}, {y}) in slide {slide_id} of store {store.uri}: "
            f"the nearest stored tile is {slide_id}:{nearest[0]}:{nearest[1]}"
        )
    return emb[match[:1]]


# ---------------------------------------------------------------------------- the query job
@dataclass(frozen=True)
class SearchConfig:
    """Settings of `mvh search` (validated on construction: UsageError naming the flag).

    A stored-tile query never returns its own tile and a slide query never ranks its own slide, unless
    `include_self` (`--include-self`).
    """

    store: str
    image: Path | None = None
    tile: str | None = None
    slide: str | None = None
    k: int = 10
    slide_level: bool = False
    exclude_slides: tuple[str, ...] = ()
    include_self: bool = False
    query_mpp: float | None = None
    weights: Path | None = None
    montage: Path | None = None
    index_cache: Path | None = None

    def __post_init__(self) -> None:
        given = [name for name, value in
                 (("--query", self.image), ("--query-tile", self.tile), ("--query-slide", self.slide))
                 if value is not None]
        if len(given) != 1:
            raise UsageError(
                f"give exactly one of --query, --query-tile, --query-slide (got {given or 'none'})"
            )
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise UsageError(f"-k must be at least 1, got {self.k}: it is the number of hits")
        if self.query_mpp is not None and not (math.isfinite(self.query_mpp) and self.query_mpp > 0):
            raise UsageError(f"--query-mpp must be a positive number of um/px, got {self.query_mpp}")
        if self.include_self and self.image is not None:
            raise UsageError("--include-self is for --query-tile and --query-slide, not an image query")
        if self.tile is not None:
            parse_tile_ref(self.tile)
        object.__setattr__(self, "exclude_slides", tuple(self.exclude_slides))


@dataclass(frozen=True)
class ImageQuery:
    """An image query already cut to the store's tile (`prepare_query_image`): what to search and report."""

    source: str
    k: int = 10
    slide_level: bool = False
    exclude_slides: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _result(
    store: EmbeddingStore, index: VectorIndex, hits: pd.DataFrame, k: int, slide_level: bool,
    query: dict[str, Any], notes: list[str], snapshot: dict[str, Any],
) -> QueryResult:
    notes[:0] = index.meta.get("notes", [])  # e.g. an exact search of a version without an index
    if len(hits) < k:
        what = "slide(s)" if slide_level else "tile(s)"
        notes.append(f"only {len(hits)} {what} found: the store holds fewer candidates than -k {k}")
    return QueryResult(
        hits=hits, slide_level=slide_level, query=query, index=index.params.describe(), notes=notes,
        store=snapshot,
    )


def image_query_results(
    store: EmbeddingStore, index: VectorIndex, embeddings: np.ndarray, queries: list[ImageQuery]
) -> list[QueryResult]:
    """Results of image queries whose tiles are embedded [Q, dim]: tile-level queries with the same k and
    excluded slides share one index search of their stacked embeddings (each row is searched on its own,
    so the hits are those of a lone query); `mvh search --query` and the web app both end here."""
    if embeddings.ndim != 2 or embeddings.shape[0] != len(queries):
        raise ValueError(f"embeddings {embeddings.shape} do not match {len(queries)} queries")
    snapshot = store.snapshot()
    hits: dict[int, pd.DataFrame] = {}
    groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
    for i, request in enumerate(queries):
        if request.slide_level:
            hits[i] = search_slides(store, embeddings[i : i + 1], k=request.k,
                                    exclude_slides=list(request.exclude_slides), index=index)
        else:
            groups.setdefault((request.k, request.exclude_slides), []).append(i)
    for (k, exclude), rows in groups.items():
        found = search(store, embeddings[rows], k=k, exclude_slides=list(exclude), index=index)
        by_query = found["query"].to_numpy()
        for j, i in enumerate(rows):
            hits[i] = found[by_query == j].drop(columns="query").reset_index(drop=True)
    return [
        _result(store, index, hits[i], request.k, request.slide_level,
                {"kind": "image", "source": request.source, "n_tiles": 1}, list(request.notes), snapshot)
        for i, request in enumerate(queries)
    ]


def run_search(
    cfg: SearchConfig, *, progress: Progress | None = None, embedder: Embedder | None = None,
    opened: tuple[EmbeddingStore, VectorIndex] | None = None,
) -> QueryResult:
    """Search the store with one query (an image file, a stored tile, or a slide).

    `opened`: the store `cfg.store` names, already open, with its loaded index (a server keeps them
    across requests); without it the store is opened and its index loaded here.
    """
    if opened is not None:
        store, index = opened
    else:
        store = EmbeddingStore.open(cfg.store)
        report(progress, Event.STATUS, STEPS, 0, "loading the index")
        index = load_index(store, private=cfg.index_cache)
    if cfg.image is not None:
        report(progress, Event.STATUS, STEPS, 0, "embedding the query image")
        emb, query_image, notes = embed_query_image(
            store, load_image(Path(cfg.image)), cfg.query_mpp, embedder=embedder, weights=cfg.weights
        )
        request = ImageQuery(source=str(cfg.image), k=cfg.k, slide_level=cfg.slide_level,
                             exclude_slides=cfg.exclude_slides, notes=tuple(notes))
        result = image_query_results(store, index, emb, [request])[0]
        return _with_montage(store, cfg, result, query_image, f"query\n{Path(cfg.image).name}")
    exclude = list(cfg.exclude_slides)
    slide_level = cfg.slide_level
    notes: list[str] = []
    own_tile: str | None = None
    query_image: np.ndarray | None = None
    if cfg.tile is not None:
        slide_id, x, y, tile_id, row = resolve_tile_ref(store, index, cfg.tile)
        # the index's row parts hold the stored embedding: no read of the whole slide from the store
        emb = None if index.meta.get("exact") else index.rows.vectors(np.array([row]))
        emb = tile_embedding(store, slide_id, x, y) if emb is None else emb
        query = {"kind": "tile", "source": f"{slide_id}:{x}:{y}", "tile_id": tile_id, "n_tiles": 1,
                 "include_self": cfg.include_self}
        if not cfg.include_self:
            own_tile = tile_id
            notes.append(f"the query tile {tile_id} itself is left out of its hits (--include-self keeps it)")
        if cfg.montage is not None:
            query_image = read_stored_tile(store, slide_id, x, y, store.fingerprint.mpp)
        caption = f"query\n{slide_id} ({x}, {y})"
    else:
        slide = str(cfg.slide)
        _require_slide(store, slide)
        emb, _ = store.slide_embeddings(slide)
        n_slide_tiles = len(emb)
        chosen = representative_tiles(emb)
        if len(chosen) < n_slide_tiles:
            emb = emb[chosen]
            notes.append(
                f"the query slide's {n_slide_tiles} tiles are represented by {len(chosen)} (the tile "
                "nearest each k-means centre of its embeddings, as Yottixel's mosaic)"
            )
        slide_level = True
        if not cfg.include_self and slide not in exclude:
            exclude.append(slide)
            notes.append(f"slide {slide} itself is excluded from its own ranking (--include-self keeps it)")
        query = {"kind": "slide", "source": slide, "n_tiles": int(n_slide_tiles),
                 "n_query_tiles": int(len(emb)), "include_self": cfg.include_self}
        caption = f"query slide\n{slide}"
    own = None if own_tile is None else [own_tile]
    if slide_level:
        hits = search_slides(store, emb, k=cfg.k, exclude_slides=exclude, index=index, exclude_tiles=own)
    else:
        hits = search(store, emb, k=cfg.k, exclude_slides=exclude, index=index, exclude_tiles=own)
        hits = hits.drop(columns="query")
    result = _result(store, index, hits, cfg.k, slide_level, query, notes, store.snapshot())
    if cfg.montage is not None and query_image is None and query["kind"] == "slide":
        query_image = _slide_thumbnail(store, cfg.slide, store.fingerprint.tile_px)
    return _with_montage(store, cfg, result, query_image, caption)


def _with_montage(
    store: EmbeddingStore, cfg: SearchConfig, result: QueryResult, query_image: np.ndarray | None,
    caption: str,
) -> QueryResult:
    if cfg.montage is not None:
        result.montage, extra = write_montage(store, query_image, result.hits, cfg.montage, caption)
        result.notes.extend(extra)
    return result


def run_query(
    store_uri: str | Path,
    *,
    image: Path | None = None,
    tile: str | None = None,
    slide: str | None = None,
    k: int = 10,
    slide_level: bool = False,
    exclude_slides: list[str] | None = None,
    include_self: bool = False,
    query_mpp: float | None = None,
    weights: Path | None = None,
    montage: Path | None = None,
    embedder: Embedder | None = None,
) -> QueryResult:
    """`run_search` with keyword arguments."""
    cfg = SearchConfig(
        store=str(store_uri), image=image, tile=tile, slide=slide, k=k, slide_level=slide_level,
        exclude_slides=tuple(exclude_slides or ()), include_self=include_self, query_mpp=query_mpp,
        weights=weights, montage=montage,
    )
    return run_search(cfg, embedder=embedder)


def _slide_thumbnail(store: EmbeddingStore, slide_id: str | None, size: int) -> np.ndarray | None:
    rows = store.slides()
    row = rows[rows["slide_id"] == slide_id]
    if row.empty or not isinstance(row.iloc[0]["path"], str) or not Path(row.iloc[0]["path"]).exists():
        return None
    try:
        with open_slide(row.iloc[0]["path"], mpp=float(row.iloc[0]["mpp"])) as handle:
            return handle.thumbnail(size)
    except (MvhError, OSError, ValueError) as exc:
        log.warning("cannot read a thumbnail of %s: %s", slide_id, exc)
        return None

