"""`mvh index build|info`: FAISS indexes over a store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import console, guarded, index_app, print_json
from mvh.cli._render import JsonOption, StoreOption, print_notes, store_access


@index_app.command("build")
@guarded
@store_access
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
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Add shards of slides on Ray workers: ADDR, auto or local."),
    ] = None,
    index_cache: Annotated[
        Path | None,
        typer.Option("--index-cache", help="Build a private index of the store as opened (a tag, a version, "
                     "read-only) into this local folder; nothing is written to the store."),
    ] = None,
    shard_tiles: Annotated[
        int, typer.Option("--shard-tiles", help="Tiles per shard (one row part, one Ray task).")
    ] = 1_000_000,  # mvh.index.shards.SHARD_TILES (not imported here: FAISS loads lazily)
    as_json: JsonOption = False,
) -> None:
    """Build the store's FAISS index (exact Flat up to 200k tiles, IVF-PQ above) inside the store."""
    from mvh.cli._progress import progress_reporter
    from mvh.index.build import IndexBuildConfig, run_index_build

    cfg = IndexBuildConfig(store=store, kind=kind, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe,
                           hnsw_m=hnsw_m, ef_search=ef, update=update, ray_address=ray_address,
                           index_cache=None if index_cache is None else str(index_cache),
                           shard_tiles=shard_tiles)
    with progress_reporter(enabled=not as_json) as progress:
        result = run_index_build(cfg, progress=progress)
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=Text(f"index of {store}"))
    for name in ("index", "tiles", "added", "store version", "device", "seconds"):
        table.add_column(name, justify="left" if name == "index" else "right")
    table.add_row(
        Text(result.description), str(result.n_tiles), str(result.n_added), str(result.store_version),
        result.device, f"{result.seconds:.2f}",
    )
    console.print(table)
    print_notes(result.notes)


@index_app.command("info")
@guarded
@store_access
def index_info_cmd(store: StoreOption = "embeddings.lance", as_json: JsonOption = False) -> None:
    """Describe the store's index: kind, parameters, size, and whether it is stale."""
    from mvh.index.index_files import index_info
    from mvh.store import EmbeddingStore

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
