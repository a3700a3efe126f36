"""`mvh export`: a store's done slides as TRIDENT/CLAM h5 files or Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvh.cli._app import app, console, guarded, print_json


@app.command("export")
@guarded
def export_cmd(
    store: Annotated[str, typer.Option("--store", help="Store directory (or LanceDB URI).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (or .parquet file).")],
    fmt: Annotated[
        str, typer.Option("--format", help="h5 (one TRIDENT/CLAM file per slide) | parquet.")
    ] = "h5",
    as_json: Annotated[bool, typer.Option("--json", help="Print the written paths as JSON.")] = False,
) -> None:
    """Export a store's done slides as TRIDENT/CLAM h5 files or one Parquet file."""
    from mvh.index.interop import export_store
    from mvh.index.store import EmbeddingStore

    paths = export_store(EmbeddingStore.open(store), fmt, out)
    if as_json:
        print_json({"format": fmt, "files": [str(p) for p in paths]})
    else:
        console.print(f"wrote {len(paths)} {fmt} file(s) to {out}", highlight=False)
