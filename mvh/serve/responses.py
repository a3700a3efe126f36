"""HTTP answers shared by the app's routes: JPEG tiles with their ETag, and error bodies."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from mvh.serve.tiles import Tile

JPEG = "image/jpeg"
# Tiles are content-addressed by their ETag: the browser keeps them an hour, then revalidates (304).
TILE_CACHE_CONTROL = "private, max-age=3600"


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error body `{"detail": message}` with `status`."""
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def tile_response(request: Request, tile: Tile) -> Response:
    """A JPEG tile with its ETag and cache lifetime; 304 without a body when the browser has it."""
    headers = {"ETag": tile.etag, "Cache-Control": TILE_CACHE_CONTROL}
    given = {tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")}
    if tile.etag in given or "*" in given:
        return Response(status_code=304, headers=headers)
    return Response(tile.data, media_type=JPEG, headers=headers)
