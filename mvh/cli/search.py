"""`mvh index build|info`, `mvh search` and `mvh eval retrieval`: FAISS indexes and queries over a store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import app, console, err_console, eval_app, guarded, index_app, print_json
from mvh.errors import UsageError

if TYPE_CHECKING:
    from mvh.tasks.query import QueryResult

StoreOption = Annotated[str, typer.Option("--store", help="Store directory (or LanceDB URI).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _notes(notes: list[str]) -> None:
    for note in notes:  # Text, not markup: notes quote paths and ids that may hold [brackets] or :colons:
        err_console.print(Text.assemble(("note: ", "yellow"), note), highlight=False, soft_wrap=True)


@index_app.command("build")
@guarded
def index_build_cmd(
    store: StoreOption = "embeddings.lance",
    kind: Annotated[str, typer.Option("--kind", help="auto | flat | ivfpq | hnsw")] = "auto",
    nlist: Annotated[int | None, typer.Option("--nlist", help="IVF cells (ivfpq).")] = None,
    m: Annotated[int | None, typer.Option("--m", help="PQ sub-quantisers; must divide the dim.")] = None,
    nbits: Annotated[int | None, typer.Option("--nbits", help="Bits per PQ code (4 = fast-scan).")] = None,
    nprobe: Annotated[int | None, typer.Option("--nprobe", help="IVF cells visited per query.")] = None,
    hnsw_m: Annotated[int | None, typer.Option("--hnsw-m", help="HNSW links per node.")] = None,
    ef: Annotated[int | None, typer.Option("--ef", help="HNSW efSearch.")] = None,
    update: Annotated[
        bool, typer.Option("--update", help="Add new slides only (rebuilds when slides were removed).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Build the store's FAISS index (exact Flat up to 200k tiles, IVF-PQ above) inside the store."""
    with err_console.status("building the index"):
        from mvh.index.store import EmbeddingStore
        from mvh.index.vector import build_index

        result = build_index(
            EmbeddingStore.open(store), kind, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, hnsw_m=hnsw_m,
            ef_search=ef, update=update,
        )
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=Text(f"index of {store}"))
    for name in ("index", "tiles", "added", "store version", "device", "seconds"):
        table.add_column(name, justify="left" if name == "index" else "right")
    table.add_row(
        Text(result.params.describe()), str(result.n_tiles), str(result.n_added), str(result.store_version),
        result.device, f"{result.seconds:.2f}",
    )
    console.print(table)
    _notes(list(result.notes))


@index_app.command("info")
@guarded
def index_info_cmd(store: StoreOption = "embeddings.lance", as_json: JsonOption = False) -> None:
    """Describe the store's index: kind, parameters, size, and whether it is stale."""
    from mvh.index.store import EmbeddingStore
    from mvh.index.vector import index_info

    info = index_info(EmbeddingStore.open(store))
    if as_json:
        print_json(info)
        return
    if not info["exists"]:
        n = info["n_tiles_in_store"]
        console.print(Text(f"no index for {store} ({n} tiles): run `mvh index build --store {store}`"))
        return
    table = Table(title=Text(f"index of {store}"), show_header=False)
    keys = ("description", "n_tiles", "n_slides", "built_from_version", "store_version", "built_at", "bytes")
    for key in keys:
        table.add_row(key, Text(str(info[key])))
    if info["stale"]:
        state = Text.assemble(("stale", "red"), f": {info['stale_reason']}")
    else:
        state = Text("up to date", style="green")
    table.add_row("state", state)
    console.print(table)


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
def search_cmd(
    store: StoreOption = "embeddings.lance",
    query: Annotated[Path | None, typer.Option("--query", help="Query image (PNG/JPEG/TIFF).")] = None,
    query_tile: Annotated[
        str | None,
        typer.Option("--query-tile", help="A stored tile: slide id, level-0 x, y with colons (s1:448:896)."),
    ] = None,
    query_slide: Annotated[
        str | None, typer.Option("--query-slide", help="Rank slides by similarity to this stored slide.")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Number of hits.")] = 10,
    slide_level: Annotated[bool, typer.Option("--slide-level", help="Rank slides instead of tiles.")] = False,
    exclude_slide: Annotated[
        list[str] | None, typer.Option("--exclude-slide", help="Leave out this slide (repeatable).")
    ] = None,
    query_mpp: Annotated[
        float | None, typer.Option("--query-mpp", help="um/px of the query image (to match the store's).")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="The store's checkpoint, if it moved (sha256 checked).")
    ] = None,
    montage: Annotated[
        Path | None, typer.Option("--montage", help="Write a PNG of the query and its hits.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Find the tiles (or slides) of the store most similar to a query image, tile or slide."""
    from mvh.tasks.query import run_query

    result = run_query(
        store, image=query, tile=query_tile, slide=query_slide, k=k, slide_level=slide_level,
        exclude_slides=exclude_slide, query_mpp=query_mpp, weights=weights, montage=montage,
    )
    if as_json:
        print_json(result.to_dict())
        return
    console.print(_hits_table(result))
    _notes(result.notes)
    if result.montage is not None:
        console.print(Text(f"montage: {result.montage}"))


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UsageError(f"--k {text!r} is not a comma-separated list of integers, e.g. 1,3,5") from exc
    if not ks or min(ks) < 1:
        raise UsageError(f"--k {text!r}: give positive integers, e.g. 1,3,5")
    return ks


@eval_app.command("retrieval")
@guarded
def eval_retrieval_cmd(
    labels: Annotated[
        Path, typer.Option("--labels", help="CSV of tile_id,label or slide_id,label.")
    ],
    store: StoreOption = "embeddings.lance",
    ks: Annotated[str, typer.Option("--k", help="Acc@k cut-offs, comma-separated.")] = "1,3,5",
    leave_one_slide_out: Annotated[
        bool,
        typer.Option(
            "--leave-one-slide-out/--same-slide-ok",
            help="Never retrieve tiles of the query's own slide (the protocol's default).",
        ),
    ] = True,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON result here.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Patch retrieval: Acc@k, MV@5, mAP@5 by exact search, and the index's recall@k against it."""
    from mvh.tasks.retrieval import run_retrieval_eval

    result = run_retrieval_eval(store, labels, _parse_ks(ks), leave_one_slide_out, out)
    if as_json:
        print_json(result)
        return
    loso = "leave-one-slide-out" if result["leave_one_slide_out"] else "same slide allowed"
    title = f"retrieval: {result['n_queries']} labelled tiles, {result['n_slides']} slides, {loso}"
    table = Table(title=Text(title))
    table.add_column("metric")
    table.add_column("exact", justify="right")
    index = result["index"]
    if index is not None:
        table.add_column(f"index ({index['description']})", justify="right")
    for metric, value in result["exact"].items():
        cells = [metric, f"{value:.4f}"]
        if index is not None:
            cells.append(f"{index[metric]:.4f}")
        table.add_row(*cells)
    if index is not None:
        for k in result["ks"]:
            table.add_row(f"recall@{k} vs exact", "1.0000", f"{index[f'recall@{k}']:.4f}")
    console.print(table)
    _notes(result["notes"])
    if out is not None:
        console.print(Text(f"written: {out}"))
