"""Queries against a store: an image, a stored tile or a whole slide; results as rows and a montage PNG.

A query image is embedded with exactly the store's model, weights and preprocessing
(`Embedder.from_fingerprint`), after being brought to the store's physical tile size: with its um/px
(`query_mpp`) the centre region covering `tile_px * store_mpp` um is cut and resized to `tile_px`;
without it, the centre square is resized to `tile_px` and a note says so. Hits are read back from
their slides for the montage the way extraction read them (`make_tile_grid_at` + `read_tile`).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from mvh.errors import FingerprintMismatchError, MvhError, UsageError
from mvh.extractor.embedder import Embedder
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import make_tile_grid_at, read_tile
from mvh.index.faiss_index import VectorIndex
from mvh.index.index_files import load_index
from mvh.index.ranking import representative_tiles, search, search_slides
from mvh.progress import STEPS, Event, Progress, report
from mvh.store import EmbeddingStore
from mvh.tasks.png_decode import decode_rgb

log = logging.getLogger(__name__)

_CAPTION_PX = 30
_MONTAGE_COLUMNS = 6


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


# ---------------------------------------------------------------------------- query images
def load_image(path: Path) -> Image.Image:
    """An image file as a decoded RGB Pillow image (UsageError naming the file when unreadable)."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            return decode_rgb(image, data)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UsageError(f"cannot read query image {path}: {exc}; give a PNG/JPEG/TIFF tile") from exc


def _centre_crop(image: Image.Image, side: int) -> Image.Image:
    """The centre side x side square (the image itself when it is that square: no copy)."""
    w, h = image.size
    if (w, h) == (side, side):
        return image
    top = (h - side) // 2
    left = (w - side) // 2
    return image.crop((left, top, left + side, top + side))


def prepare_query_image(
    image: Image.Image, tile_px: int, mpp: float, query_mpp: float | None = None,
    mpp_field: str = "--query-mpp",
) -> tuple[np.ndarray, list[str]]:
    """Bring an RGB image to the store's tile (tile_px at mpp): the tile [tile_px, tile_px, 3] and notes
    (which name the query's um/px as `mpp_field`: the CLI option, or the web page's field).

    Cropping and resizing stay in Pillow: a 1000 px upload is never unpacked to an array and packed back.
    """
    w, h = image.size
    notes: list[str] = []
    if query_mpp is not None:
        if not query_mpp > 0:
            raise UsageError(f"{mpp_field} must be positive, got {query_mpp}")
        side = tile_px * mpp / query_mpp  # the store's physical tile, in query pixels
        if min(h, w) >= side:
            crop = max(1, int(round(side)))
            region = _centre_crop(image, crop)
            if (h, w) != (crop, crop):
                notes.append(
                    f"query image {w}x{h} px at {query_mpp:g} um/px: its centre {crop} px "
                    f"({tile_px * mpp:g} um) was used, resized to {tile_px} px at {mpp:g} um/px"
                )
        else:
            crop = min(h, w)
            region = _centre_crop(image, crop)
            notes.append(
                f"query image {w}x{h} px at {query_mpp:g} um/px covers less than a store tile "
                f"({tile_px * mpp:g} um): its centre square was upscaled to {tile_px} px"
            )
    else:
        crop = min(h, w)
        region = _centre_crop(image, crop)
        if (h, w) != (tile_px, tile_px):
            notes.append(
                f"query image {w}x{h} px has no {mpp_field}: its centre {crop} px square was resized to "
                f"{tile_px} px; give {mpp_field} to match the store's {mpp:g} um/px"
            )
    if region.size != (tile_px, tile_px):
        region = region.resize((tile_px, tile_px), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(region)), notes


def query_embedder(store: EmbeddingStore, weights: Path | None = None, device: str = "auto") -> Embedder:
    """The store's own model (FingerprintMismatchError when the weights or config differ)."""
    fp = store.fingerprint
    if fp.model.startswith("external:"):  # imported features: no weights file can rebuild their model here
        raise UsageError(
            f"store {store.uri} holds features made by another tool ({fp.model}): an image query needs that "
            "model, which mvh cannot run; query by a stored tile (--query-tile SLIDE:X:Y) or a whole slide "
            "(--query-slide SLIDE)"
        )
    embedder = Embedder.from_fingerprint(fp, weights=weights, device=device)
    rebuilt = embedder.fingerprint(fp.mpp, fp.tile_px, fp.embedding_dtype)
    if not rebuilt.matches(fp):
        raise FingerprintMismatchError(
            f"the query model [{rebuilt.describe()}] differs from store {store.uri} "
            f"[{fp.describe()}]: pass the store's checkpoint with --weights"
        )
    return embedder


def embed_query_image(
    store: EmbeddingStore,
    image: Image.Image,
    query_mpp: float | None = None,
    embedder: Embedder | None = None,
    weights: Path | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embedding [1, dim] of an RGB image, the tile [H, W, 3] it was cut to, and notes."""
    fp = store.fingerprint
    tile, notes = prepare_query_image(image, fp.tile_px, fp.mpp, query_mpp)
    embedder = embedder if embedder is not None else query_embedder(store, weights)
    return embedder.embed_images([tile]), tile, notes


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


def resolve_tile_ref(store: EmbeddingStore, index: VectorIndex, text: str) -> tuple[str, int, int, str]:
    """(slide_id, x, y, tile_id) of the stored tile `text` names: an exact tile id of the index, or the
    first reading of `tile_ref_candidates` that names a tile; UsageError naming the nearest tile else."""
    row = int(index.tile_rows([text])[0])
    if row >= 0:
        hit = index.rows.take(np.array([row])).iloc[0]
        return str(hit["slide_id"]), int(hit["x"]), int(hit["y"]), str(hit["tile_id"])
    parse_tile_ref(text)
    for slide_id, x, y in tile_ref_candidates(text):
        found = index.rows.find(slide_id, x, y)
        if found >= 0:
            return slide_id, x, y, str(index.rows.take(np.array([found])).iloc[0]["tile_id"])
    slide_id, x, y = tile_ref_candidates(text)[-1]
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


# ---------------------------------------------------------------------------- montage
def read_stored_tile(store: EmbeddingStore, slide_id: str, x: int, y: int, mpp: float) -> np.ndarray | None:
    """A stored tile read back from its slide [tile_px, tile_px, 3], or None if the slide is unreadable."""
    rows = store.slides()
    row = rows[rows["slide_id"] == slide_id]
    if row.empty or not isinstance(row.iloc[0]["path"], str) or not Path(row.iloc[0]["path"]).exists():
        return None
    record = row.iloc[0]
    user_mpp = float(record["mpp"]) if record.get("mpp_source") == "user" else None
    try:
        with open_slide(record["path"], mpp=user_mpp) as slide:
            grid = make_tile_grid_at(slide, [x], [y], mpp=mpp, tile_px=store.fingerprint.tile_px)
            return read_tile(slide, grid, 0)
    except (MvhError, OSError, ValueError) as exc:
        log.warning("cannot read tile %s:%d:%d back from %s: %s", slide_id, x, y, record["path"], exc)
        return None


def _cell(image: np.ndarray | None, caption: str, size: int) -> Image.Image:
    cell = Image.new("RGB", (size, size + _CAPTION_PX), "white")
    if image is None:
        cell.paste(Image.new("RGB", (size, size), (200, 200, 200)), (0, 0))
        ImageDraw.Draw(cell).text((8, size // 2), "slide not found", fill="black")
    else:
        cell.paste(ImageOps.pad(Image.fromarray(image), (size, size), color="white"), (0, 0))
    draw = ImageDraw.Draw(cell)
    for i, line in enumerate(caption.split("\n")[:2]):
        draw.text((4, size + 2 + 13 * i), line, fill="black")
    return cell


def write_montage(
    store: EmbeddingStore, query_image: np.ndarray | None, hits: pd.DataFrame, out: Path, query_caption: str
) -> tuple[Path, list[str]]:
    """A PNG grid: the query, then each hit read back from its slide with rank, slide, x, y and score."""
    size = store.fingerprint.tile_px
    cells = [_cell(query_image, query_caption, size)]
    missing = set()
    for hit in hits.itertuples(index=False):
        tile = read_stored_tile(store, hit.slide_id, int(hit.x), int(hit.y), float(hit.mpp))
        if tile is None:
            missing.add(hit.slide_id)
        caption = f"#{hit.rank} {hit.slide_id}\n({hit.x}, {hit.y}) {hit.score:.3f}"
        cells.append(_cell(tile, caption, size))
    columns = min(_MONTAGE_COLUMNS, len(cells))
    rows = (len(cells) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * size, rows * (size + _CAPTION_PX)), "white")
    for i, cell in enumerate(cells):
        sheet.paste(cell, ((i % columns) * size, (i // columns) * (size + _CAPTION_PX)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        sheet.save(out, format="PNG")
    except OSError as exc:
        raise UsageError(f"cannot write montage {out}: {exc}") from exc
    if missing:
        return out, [f"montage: slides not found at their stored paths: {', '.join(sorted(missing))}"]
    return out, []


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
        slide_id, x, y, tile_id = resolve_tile_ref(store, index, cfg.tile)
        emb = tile_embedding(store, slide_id, x, y)
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

