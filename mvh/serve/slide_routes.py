"""Per-slide API routes: scanner metadata, the label/macro images, a thumbnail, and GeoJSON for QuPath.

Every route names a served store and a slide id; the file is the one the store's `slides` table records
(`catalog`), and an associated image is one of the names the file itself lists. Nothing is written.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from mvh.interop.geojson import feature_collection, hit_features, tile_features
from mvh.serve.catalog import Catalog, NotFound
from mvh.serve.responses import JPEG, tile_response
from mvh.serve.tiles import TileServer

GEOJSON = "application/geo+json"
# Associated images a viewer shows; others a file may hold are not served.
ASSOCIATED = ("label", "macro", "thumbnail")
# Where vendors put the scanner's name (OpenSlide properties), first found wins.
SCANNER_KEYS = ("aperio.ScanScope ID", "hamamatsu.Product", "philips.DICOM_MANUFACTURER",
                "leica.device-model", "mirax.GENERAL.SCANNER_TYPE", "ventana.ScannerModel", "tiff.Model",
                "tiff.Make")


class HitBox(BaseModel):
    """A search hit on this slide, as the viewer holds it."""

    model_config = ConfigDict(extra="ignore")
    rank: int = Field(ge=1)
    x: int
    y: int
    score: float = Field(allow_inf_nan=False)


class HitsBody(BaseModel):
    """The hits of one search on one slide, and how many hits the whole search had (for the colours)."""

    model_config = ConfigDict(extra="forbid")
    hits: list[HitBox] = Field(min_length=1, max_length=1000)
    n_hits: int = Field(ge=1, le=1000)


def _number(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def slide_metadata(properties: dict[str, str], associated: list[str]) -> dict[str, Any]:
    """Scanner, objective power, um/px and associated images from a slide's OpenSlide properties."""
    vendor = properties.get("openslide.vendor")
    model = next((properties[k] for k in SCANNER_KEYS if properties.get(k)), None)
    mpp_x, mpp_y = _number(properties.get("openslide.mpp-x")), _number(properties.get("openslide.mpp-y"))
    return {
        "vendor": vendor,
        "scanner": " ".join(p for p in (vendor, model) if p) or None,
        "objective_power": _number(properties.get("openslide.objective-power")),
        "mpp_x": mpp_x,
        "mpp_y": mpp_y,
        "associated": [name for name in ASSOCIATED if name in associated],
    }


def _attachment(body: dict[str, Any], filename: str) -> JSONResponse:
    return JSONResponse(body, media_type=GEOJSON,
                        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}"})


def slide_router(catalog: Catalog, tiles: TileServer) -> APIRouter:
    """The per-slide routes over the catalog's stores and the shared tile server."""
    router = APIRouter(prefix="/api/stores/{store}/slides/{slide_id}")

    @router.get("/metadata")
    def metadata(store: str, slide_id: str) -> dict[str, Any]:
        """Scanner, objective power and um/px (OpenSlide properties), the store's um/px, size, file hash."""
        entry = catalog.get(store)
        record = entry.slide(slide_id)
        properties, associated = tiles.properties(entry, slide_id)
        found = slide_metadata(properties, associated)
        return {**found, "slide_id": slide_id, "width": record.width, "height": record.height,
                "mpp": record.mpp, "mpp_source": record.mpp_source, "file_hash": record.file_hash,
                "associated_urls": {name: f"/api/stores/{quote(store, safe='')}/slides/"
                                          f"{quote(slide_id, safe='')}/associated/{name}.jpg"
                                    for name in found["associated"]}}

    @router.get("/associated/{name}.jpg", response_class=Response, responses={200: {"content": {JPEG: {}}}})
    async def associated(request: Request, store: str, slide_id: str, name: str) -> Response:
        """The label, macro or thumbnail image the slide file holds (JPEG; 404 when it has none)."""
        if name not in ASSOCIATED:
            raise NotFound(f"{name!r} is not an associated image the viewer shows ({', '.join(ASSOCIATED)})")
        entry = catalog.get(store)
        tile = await run_in_threadpool(tiles.associated, entry, slide_id, name)
        return tile_response(request, tile)

    @router.get("/thumbnail.jpg", response_class=Response, responses={200: {"content": {JPEG: {}}}})
    async def thumbnail(request: Request, store: str, slide_id: str) -> Response:
        """The whole slide, at most 256 px on a side (JPEG)."""
        tile = await run_in_threadpool(tiles.thumbnail, catalog.get(store), slide_id)
        return tile_response(request, tile)

    @router.get("/tiles.geojson", responses={200: {"content": {GEOJSON: {}}}})
    def tiles_geojson(store: str, slide_id: str) -> JSONResponse:
        """The slide's stored tiles as QuPath detections (level-0 px), as `mvh export --format geojson`."""
        entry = catalog.get(store)
        coords = entry.tile_coords(slide_id)
        size = tiles.footprint(entry, slide_id)
        features = tile_features(coords[:, 0].tolist(), coords[:, 1].tolist(), size)
        return _attachment(feature_collection(features), f"{slide_id}.tiles.geojson")

    @router.post("/hits.geojson", responses={200: {"content": {GEOJSON: {}}}})
    def hits_geojson(store: str, slide_id: str, body: HitsBody) -> JSONResponse:
        """Hits of a search on this slide as QuPath annotations (level-0 px), as `mvh search --geojson`."""
        entry = catalog.get(store)
        for hit in body.hits:
            entry.require_tile(slide_id, hit.x, hit.y)
        rows = [hit.model_dump() for hit in body.hits]
        features = hit_features(rows, tiles.footprint(entry, slide_id), body.n_hits)
        return _attachment(feature_collection(features), f"{slide_id}.hits.geojson")

    return router
