"""The FastAPI app of `mvh serve`: pages, the JSON API under /api, DeepZoom tiles; it only reads stores."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from mvh import __version__
from mvh.errors import CheckpointError, MvhError, StoreError, UsageError
from mvh.serve.auth import COOKIE, OPEN_PATHS, authorized, cookie_value, token_ok
from mvh.serve.catalog import Catalog, NotFound
from mvh.serve.config import ServeConfig
from mvh.serve.form import parse_form, read_body
from mvh.serve.responses import JPEG, tile_response
from mvh.serve.responses import error as _error
from mvh.serve.results import check_results_folders, figures_for, layers_for, read_results_folder
from mvh.serve.search import SearchService
from mvh.serve.slide_routes import slide_router
from mvh.serve.tiles import TileServer
from mvh.serve.uploads import NotAnImage, UploadTooLarge

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
OPENSEADRAGON = HERE / "node_modules" / "openseadragon" / "build" / "openseadragon"
MAX_K = 1000


def status_for(exc: MvhError) -> int:
    """The HTTP status of a library error: 404 unknown names, 413/415 bad uploads, 409 store state."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, UploadTooLarge):
        return 413
    if isinstance(exc, NotAnImage):
        return 415
    if isinstance(exc, (StoreError, CheckpointError)):
        return 409
    if isinstance(exc, UsageError):
        return 400
    return 503


class Hit(BaseModel):
    """One search hit: a stored tile (or, slide-level, a slide and its best tile)."""

    model_config = ConfigDict(extra="allow")
    rank: int
    slide_id: str
    x: int
    y: int
    mpp: float
    tile_px: int
    score: float
    thumbnail_url: str
    viewer_url: str


class SearchResponse(BaseModel):
    """Hits of a query, the query as the model saw it, and notes."""

    hits: list[Hit]
    query: dict[str, Any]
    store: str
    slide_level: bool
    index: str
    notes: list[str]


class TileQuery(BaseModel):
    """A JSON search request: a stored tile as the query."""

    model_config = ConfigDict(extra="forbid")
    tile: str = Field(description="SLIDE:X:Y, a stored tile (level-0 top-left)", min_length=1)
    k: int = Field(10, ge=1, le=MAX_K)
    store: str | None = None
    slide_level: bool = False
    include_self: bool = Field(False, description="keep the query tile in its own hits (--include-self)")


_SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": TileQuery.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
                        "store": {"type": "string"},
                        "slide_level": {"type": "boolean", "default": False},
                        "query_mpp": {"type": "number", "exclusiveMinimum": 0},
                    },
                }
            },
        },
    }
}


class _ImageForm(BaseModel):
    k: int = Field(10, ge=1, le=MAX_K)
    store: str | None = None
    slide_level: bool = False
    query_mpp: float | None = Field(None, gt=0, allow_inf_nan=False)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html")


class Gate:
    """The token rule and the upload cap in front of every HTTP request, as plain ASGI (a decorator
    middleware would add a task and a body stream to every request, a few ms on a busy 2-core machine)."""

    def __init__(self, app: ASGIApp, config: ServeConfig) -> None:
        self.app = app
        self.config = config

    def refusal(self, request: Request) -> Response | None:
        """The response refusing `request`, or None to let it through."""
        config, path = self.config, request.url.path
        if config.token is not None and path not in OPEN_PATHS and not authorized(request, config.token):
            if path.startswith("/api/") or path == "/openapi.json":
                return _error(401, "missing or wrong token: send Authorization: Bearer TOKEN",
                              {"WWW-Authenticate": "Bearer"})
            return RedirectResponse("/login", status_code=303)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > config.max_upload_bytes + 65536:
            return _error(413, f"request body over the {config.max_upload_mb:g} MB upload cap: send a tile")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a refused request here; pass the others on."""
        if scope["type"] == "http":
            refused = self.refusal(Request(scope))
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(config: ServeConfig) -> FastAPI:
    """Build the app over the stores and results folders of `config` (stores are opened now)."""
    check_results_folders(config.results)
    catalog = Catalog(config.stores, max_batch=config.max_batch, batch_wait_s=config.batch_wait_ms / 1000,
                      torch_threads=config.torch_threads)
    tiles = TileServer(cache_bytes=int(config.tile_cache_mb * 2**20))
    searcher = SearchService(catalog, config)
    results = [read_results_folder(folder, f"r{i}") for i, folder in enumerate(config.results)]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        catalog.close()  # the image-query workers end with the app

    app = FastAPI(
        title="mvh serve",
        version=__version__,
        description="Search embedding stores by image or stored tile; browse slides with overlays.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.catalog, app.state.tiles, app.state.results = catalog, tiles, results
    app.add_middleware(Gate, config=config)

    @app.exception_handler(MvhError)
    async def mvh_error(request: Request, exc: MvhError) -> JSONResponse:
        return _error(status_for(exc), " ".join(str(exc).split()))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # Nobody reads the answer; one line says what happened (not uvicorn's traceback of an app error)
        log.warning("client closed the connection during %s %s before its body arrived; request dropped",
                    request.method, request.url.path)
        return Response(status_code=400)

    # ------------------------------------------------------------------------ pages
    @app.get("/", include_in_schema=False)
    def search_page() -> FileResponse:
        return _page("search.html")

    @app.get("/slides/{slide_id}", include_in_schema=False)
    def viewer_page(slide_id: str, store: str | None = None) -> FileResponse:
        catalog.holding(slide_id, store).slide(slide_id)
        return _page("viewer.html")

    @app.get("/stores", include_in_schema=False)
    def stores_page() -> FileResponse:
        return _page("stores.html")

    @app.get("/login", include_in_schema=False)
    def login_page() -> FileResponse:
        return _page("login.html")

    @app.post("/login", include_in_schema=False)
    def login(token: Annotated[str, Form()] = "") -> Response:
        if config.token is None:
            return RedirectResponse("/", status_code=303)
        if not token_ok(token, config.token):
            return HTMLResponse("<p>Wrong token. <a href='/login'>Try again</a>.</p>", status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, cookie_value(config.token), httponly=True, samesite="strict")
        return response

    app.include_router(slide_router(catalog, tiles))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if OPENSEADRAGON.is_dir():
        app.mount("/vendor/openseadragon", StaticFiles(directory=OPENSEADRAGON), name="openseadragon")

    # ------------------------------------------------------------------------ API
    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Liveness, version, and whether the viewer's OpenSeadragon is installed."""
        return {"status": "ok", "version": __version__, "stores": list(catalog.entries),
                "openseadragon": OPENSEADRAGON.is_dir(), "token_required": config.token is not None}

    @app.get("/api/stores")
    def stores() -> list[dict[str, Any]]:
        """Served stores: fingerprint, counts, whether image queries work."""
        return [entry.describe() for entry in catalog.entries.values()]

    @app.get("/api/stores/{store}/slides")
    def slides(store: str) -> list[dict[str, Any]]:
        """Every slide row of a store (done and failed), without file paths."""
        frame = catalog.get(store).store.slides()
        keep = ["slide_id", "status", "error", "n_tiles", "width", "height", "mpp", "mpp_source", "seconds",
                "file_hash"]
        frame = frame[[c for c in keep if c in frame.columns]]
        return [{k: (None if v != v else v) for k, v in row.items()}  # NaN -> null
                for row in frame.astype(object).to_dict(orient="records")]

    @app.get("/api/stores/{store}/slides/{slide_id}/tiles")
    def slide_tiles(store: str, slide_id: str) -> dict[str, Any]:
        """The slide's stored tiles (level-0 top-left x, y) and their level-0 side."""
        entry = catalog.get(store)
        record = entry.slide(slide_id)
        coords = entry.tile_coords(slide_id)
        return {"slide_id": slide_id, "width": record.width, "height": record.height,
                "size_l0": tiles.footprint(entry, slide_id), "tile_px": entry.store.fingerprint.tile_px,
                "mpp": entry.store.fingerprint.mpp, "x": coords[:, 0].tolist(), "y": coords[:, 1].tolist()}

    @app.get("/api/overlays/{store}/{slide_id}")
    def overlays(store: str, slide_id: str) -> dict[str, Any]:
        """Attention and ST layers of the --results folders on this slide."""
        catalog.get(store).slide(slide_id)
        return {"layers": layers_for(results, slide_id), "figures": figures_for(results, slide_id),
                "results": [{"name": r.name, "task": r.task, "folder": r.folder.name, "notes": r.notes}
                            for r in results]}

    @app.get("/api/results/{name}/figures/{key}", response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    def figure(name: str, key: str) -> Response:
        """A PNG figure listed in a --results folder's results.json (by folder name r0, r1, ... and key)."""
        folder = next((r for r in results if r.name == name), None)
        found = None if folder is None else folder.figures.get(key)
        if found is None:
            raise NotFound(f"no figure {key!r} in results {name!r}")
        return FileResponse(found.path, media_type="image/png")

    @app.get("/api/tiles/{slide_id}/{x}/{y}.jpg", response_class=Response,
             responses={200: {"content": {JPEG: {}}}, 304: {"description": "the browser's copy is current"}})
    async def stored_tile(
        request: Request, slide_id: str, x: int, y: int, store: str | None = None
    ) -> Response:
        """A stored tile as JPEG, read from its slide at the store's geometry."""
        tile = tiles.cached_stored(store, slide_id, x, y) if store else None
        if tile is None:
            tile = await run_in_threadpool(
                lambda: tiles.stored_tile(catalog.holding(slide_id, store), slide_id, x, y)
            )
        return tile_response(request, tile)

    @app.get("/api/dzi/{store}/{slide_id}")
    def dzi(store: str, slide_id: str) -> dict[str, Any]:
        """The slide's DeepZoom descriptor (OpenSeadragon's JSON form of DZI)."""
        entry = catalog.get(store)
        url = f"/api/dzi/{quote(store, safe='')}/{quote(slide_id, safe='')}/"
        return tiles.descriptor(entry, slide_id, url)

    @app.get("/api/dzi/{store}/{slide_id}/{level}/{col}_{row}.jpeg", response_class=Response,
             responses={200: {"content": {JPEG: {}}}, 304: {"description": "the browser's copy is current"}})
    async def dzi_tile(
        request: Request, store: str, slide_id: str,
        level: Annotated[int, PathParam(ge=0, le=64)],
        col: Annotated[int, PathParam(ge=0)],
        row: Annotated[int, PathParam(ge=0)],
    ) -> Response:
        """One DeepZoom tile (JPEG; a tile in memory is answered without leaving the event loop)."""
        tile = tiles.cached_deepzoom(store, slide_id, level, col, row)
        if tile is None:
            tile = await run_in_threadpool(tiles.deepzoom_tile, catalog.get(store), slide_id, level, col, row)
        return tile_response(request, tile)

    @app.post("/api/search", response_model=SearchResponse, openapi_extra=_SEARCH_BODY)
    async def search(request: Request) -> Any:
        """Search a store: multipart `image` (+ k, store, slide_level, query_mpp) or JSON `{"tile": ...}`."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if kind == "multipart/form-data":
                body = await read_body(request.stream(), config.max_upload_bytes + 65536)
                form = parse_form(body, request.headers["content-type"], max_fields=8, max_files=1)
                upload = form.files.get("image")
                if upload is None:
                    return _error(422, "multipart search needs a file field `image` (PNG/JPEG/TIFF)")
                params = _ImageForm.model_validate({k: v for k, v in form.fields.items() if v != ""})
                return await run_in_threadpool(
                    searcher.image_search, params.store, upload.data, upload.filename or "upload", params.k,
                    params.slide_level, params.query_mpp,
                )
            if kind == "application/json":
                body = TileQuery.model_validate(await request.json())
                return await run_in_threadpool(
                    searcher.tile_search, body.store, body.tile, body.k, body.slide_level, body.include_self
                )
        except ValidationError as exc:
            return _error(422, "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                                         for e in exc.errors()))
        except ValueError as exc:  # a body that is not JSON (a malformed form is a FormError: 400)
            return _error(400, f"unreadable request body ({exc})")
        return _error(415, "send multipart/form-data with a file `image`, or JSON {\"tile\": \"SLIDE:X:Y\"}")

    @app.get("/api/queries/{query_id}.png", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "unknown or evicted"}})
    def query_image(query_id: str) -> Response:
        """The query image of a recent image search as fed to the model (PNG; kept in memory, LRU)."""
        png = searcher.queries.png(query_id)
        if png is None:
            raise NotFound(f"no query image {query_id!r}: it is not one of the recent searches; search again")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/search/limits")
    def limits() -> dict[str, Any]:
        """Upload and pixel limits of image queries, and the largest k."""
        return {"max_upload_bytes": config.max_upload_bytes, "max_pixels": config.max_pixels, "max_k": MAX_K}

    def openapi() -> dict[str, Any]:
        # the served stores are fixed at start-up: the schema lists them
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    for param in operation.get("parameters", []):
                        if param.get("name") == "store":
                            param["schema"] = {**param.get("schema", {}), "enum": list(catalog.entries)}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
