"""`mvh export`: a store's done slides as TRIDENT-complete h5, CLAM's h5_files/pt_files, or Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvh.cli._app import app, console, guarded, print_json
from mvh.cli._progress import progress_reporter
from mvh.cli._render import JsonOption, StoreOption, store_access


@app.command("export")
@guarded
@store_access
def export_cmd(
    out: Annotated[
        Path, typer.Option("--out", help="Output folder (parquet: OUT/tiles.parquet); not an existing file.")
    ],
    store: StoreOption = "embeddings.lance",
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="h5 (one TRIDENT-complete file per slide) | clam (h5_files/, pt_files/) | parquet | "
                 "geojson (each slide's tile grid for QuPath, SLIDE_ID.geojson).",
        ),
    ] = "h5",
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="Verify the store (as `mvh verify`) first; export nothing if it fails."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Export a store's done slides for TRIDENT, CLAM, Patho-Bench, Parquet readers or QuPath (GeoJSON)."""
    from mvh.interop import ExportConfig, run_export

    cfg = ExportConfig(store=store, out=out, fmt=fmt, verify=verify)
    with progress_reporter(enabled=not as_json) as progress:
        result = run_export(cfg, progress=progress)
    if as_json:
        print_json(result.to_dict())
        return
    checked = " (store verified first)" if result.verified else ""
    console.print(
        f"wrote {len(result.files)} {fmt} file(s) for {result.n_slides} slide(s), {result.n_tiles} tiles "
        f"to {out}{checked}",
        highlight=False,
        soft_wrap=True,
    )
