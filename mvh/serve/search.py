"""Searches from the web app go through `mvh.tasks.query`, as `mvh search` does.

So a query gives the same hits in the browser as on the command line. An uploaded image is checked
(`uploads.decode_upload`: RGB exactly as `mvh search` converts a file), cut to the store's tile by
`prepare_query_image`, embedded by the store's model and searched by `image_query_results`: the
functions `mvh search --query` runs. Image queries that arrive together share one model forward and one
index search (the store entry's batcher); a stored-tile query runs `run_search` on the entry's open
store and index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from mvh.errors import UsageError
from mvh.jobs import jsonable
from mvh.serve.catalog import Catalog, StoreEntry
from mvh.serve.config import ServeConfig
from mvh.serve.queries import QueryImages, query_url
from mvh.serve.uploads import decode_upload
from mvh.tasks.query import (
    ImageQuery,
    QueryResult,
    SearchConfig,
    parse_tile_ref,
    run_search,
)
from mvh.tasks.query_image import prepare_query_image

# The search page's um/px field, named in notes about the query's scale (the CLI names --query-mpp).
MPP_FIELD = "'um/px of the image'"


def tile_url(store: str, slide_id: str, x: int, y: int) -> str:
    """URL of a stored tile's JPEG."""
    return f"/api/tiles/{quote(slide_id, safe='')}/{int(x)}/{int(y)}.jpg?store={quote(store, safe='')}"


def viewer_url(store: str, slide_id: str, x: int, y: int) -> str:
    """URL of the slide viewer centred on a tile."""
    return f"/slides/{quote(slide_id, safe='')}?store={quote(store, safe='')}&x={int(x)}&y={int(y)}"


class SearchService:
    """Image and stored-tile searches over the catalog's stores."""

    def __init__(self, catalog: Catalog, config: ServeConfig) -> None:
        self.catalog = catalog
        self.config = config
        self.queries = QueryImages()

    def _response(self, entry: StoreEntry, result: QueryResult, query: dict[str, Any]) -> dict[str, Any]:
        tile_px = entry.store.fingerprint.tile_px
        records = entry.slide_records()  # cached per store version: the file hash is looked up, not computed
        hits = []
        for row in jsonable(result.hits.to_dict(orient="records")):
            row["tile_px"] = tile_px
            record = records.get(row["slide_id"])
            row["file_hash"] = None if record is None else record.file_hash
            row["thumbnail_url"] = tile_url(entry.name, row["slide_id"], row["x"], row["y"])
            row["viewer_url"] = viewer_url(entry.name, row["slide_id"], row["x"], row["y"])
            hits.append(row)
        return {"hits": hits, "query": query, "store": entry.name, "slide_level": result.slide_level,
                "index": result.index, "notes": list(result.notes)}

    def image_search(
        self, store: str | None, data: bytes, filename: str, k: int, slide_level: bool,
        query_mpp: float | None,
    ) -> dict[str, Any]:
        """Embed an uploaded image with the store's model and search (UsageError for bad uploads)."""
        entry = self.catalog.get(store)
        ok, why = entry.image_queries()
        if not ok:
            raise UsageError(why)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError(f"k must be at least 1, got {k}: it is the number of hits")
        pixels = decode_upload(data, self.config.max_upload_bytes, self.config.max_pixels)
        fp = entry.store.fingerprint
        fed, notes = prepare_query_image(pixels, fp.tile_px, fp.mpp, query_mpp, mpp_field=MPP_FIELD)
        name = Path(filename).name
        result = entry.search_image(fed, ImageQuery(name, k, slide_level, notes=tuple(notes)))
        query = {**jsonable(result.query), "source": name, "query_mpp": query_mpp,
                 "width": pixels.width, "height": pixels.height,
                 "image": query_url(self.queries.add(fed))}
        return self._response(entry, result, query)

    def tile_search(
        self, store: str | None, tile: str, k: int, slide_level: bool, include_self: bool = False
    ) -> dict[str, Any]:
        """Search with a stored tile `SLIDE:X:Y` (or its tile id) as the query."""
        slide_id, x, y = parse_tile_ref(tile)
        entry = self.catalog.holding(slide_id, store)
        entry.slide(slide_id)
        cfg = SearchConfig(store=entry.source, tile=tile, k=k, slide_level=slide_level,
                           include_self=include_self)
        result = run_search(cfg, opened=(entry.store, entry.index()))
        query = {**jsonable(result.query), "slide_id": slide_id, "x": x, "y": y,
                 "image": tile_url(entry.name, slide_id, x, y)}
        return self._response(entry, result, query)
