"""`mvh import`: index features made by another tool (TRIDENT/CLAM h5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvh.cli._app import app, console, guarded, print_json


@app.command("import")
@guarded
def import_cmd(
    h5_dir: Annotated[Path, typer.Argument(help="Folder of TRIDENT/CLAM h5 files (features, coords).")],
    store: Annotated[str, typer.Option("--store", help="Store directory (or LanceDB URI) to fill.")],
    model: Annotated[str, typer.Option("--model", help="Name of the tool/model that made the features.")],
    mpp: Annotated[
        float | None, typer.Option("--mpp", help="um/px of the tiles, if the files lack it.")
    ] = None,
    tile_px: Annotated[int | None, typer.Option("--tile-px", help="Tile px, if the files lack it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the store description as JSON.")] = False,
) -> None:
    """Index features made by another tool (model recorded as external:<name>)."""
    from mvh.index.interop import import_h5

    info = import_h5(h5_dir, store, model, mpp=mpp, tile_px=tile_px).info()
    if as_json:
        print_json(info)
    else:
        console.print(
            f"imported {info['n_slides']} slide(s), {info['n_tiles']} tiles into {store} "
            f"as {info['fingerprint']['model']}",
            highlight=False,
        )
