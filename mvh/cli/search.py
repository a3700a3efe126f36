"""`mvh search`: the tiles (or slides) of a store most similar to a query."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import app, console, guarded, print_json
from mvh.cli._render import JsonOption, StoreOption, print_notes, store_access
from mvh.errors import UsageError

if TYPE_CHECKING:
    from mvh.tasks.query import QueryResult


def _hits_table(result: QueryResult) -> Table:
    title = f"{result.query['kind']} query {result.query['source']} ({result.index})"
    table = Table(title=Text(title))
    if result.slide_level:
        columns = ("rank", "slide", "score", "tiles hit", "best x", "best y", "best score")
        keys = ("rank", "slide_id", "score", "n_hits", "x", "y", "tile_score")
    else:
        columns = ("rank", "slide", "x", "y", "score")
        keys = ("rank", "slide_id", "x", "y", "score")
    for name in columns:
        table.add_column(name, justify="left" if name == "slide" else "right")
    for row in result.hits.to_dict(orient="records"):
        table.add_row(*(_cell(row[key]) for key in keys))
    return table


def _cell(value: Any) -> Text:
    return Text(f"{value:.4f}" if isinstance(value, float) else str(value))


@app.command("search")
@guarded
@store_access
def search_cmd(
    store: StoreOption = "embeddings.lance",
    query: Annotated[Path | None, typer.Option("--query", help="Query image (PNG/JPEG/TIFF).")] = None,
    query_tile: Annotated[
        str | None,
        typer.Option(
            "--query-tile",
            help="A stored tile: its tile id as --json prints it (s1:448:896:448), or slide, level-0 x, y "
                 "(s1:448:896).",
        ),
    ] = None,
    query_slide: Annotated[
        str | None, typer.Option("--query-slide", help="Rank slides by similarity to this stored slide.")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Number of hits (a count).")] = 10,
    slide_level: Annotated[bool, typer.Option("--slide-level", help="Rank slides instead of tiles.")] = False,
    exclude_slide: Annotated[
        list[str] | None, typer.Option("--exclude-slide", help="Leave out this slide (repeatable).")
    ] = None,
    include_self: Annotated[
        bool,
        typer.Option("--include-self", help="Keep the query tile (or slide) itself among its hits."),
    ] = False,
    query_mpp: Annotated[
        float | None, typer.Option("--query-mpp", help="um/px of the query image (to match the store's).")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="The store's checkpoint, if it moved (sha256 checked).")
    ] = None,
    montage: Annotated[
        Path | None, typer.Option("--montage", help="Write a PNG of the query and its hits.")
    ] = None,
    index_cache: Annotated[
        Path | None,
        typer.Option(
            "--index-cache", help="Also use private indexes built here (`mvh index build --index-cache`)."
        ),
    ] = None,
    geojson: Annotated[
        Path | None,
        typer.Option(
            "--geojson",
            help="Write the hits for QuPath (File > Import objects): one annotation per hit in level-0 px; "
                 "hits on several slides go to NAME.SLIDE_ID.geojson, one file per slide.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Find the tiles (or slides) of the store most similar to a query image, tile or slide."""
    from mvh.cli._progress import progress_reporter
    from mvh.tasks.query import SearchConfig, run_search

    cfg = SearchConfig(
        store=store, image=query, tile=query_tile, slide=query_slide, k=k, slide_level=slide_level,
        exclude_slides=tuple(exclude_slide or ()), include_self=include_self, query_mpp=query_mpp,
        weights=weights, montage=montage, index_cache=index_cache,
    )
    if query is not None and not query.is_file():  # before the store and its index are opened
        raise UsageError(f"{query}: no such query image; pass a PNG/JPEG/TIFF file")
    with progress_reporter(enabled=not as_json) as progress:
        result = run_search(cfg, progress=progress)
    if geojson is not None:
        from mvh.interop.geojson import write_search_hits

        written = write_search_hits(geojson, result.to_dict()["hits"], store)
    if as_json:
        print_json(result.to_dict())
        return
    console.print(_hits_table(result))
    print_notes(result.notes)
    if result.montage is not None:
        console.print(Text(f"montage: {result.montage}"))
    if geojson is not None:
        console.print(Text("QuPath GeoJSON: " + ", ".join(str(p) for p in written)))
