"""`mvh import`: index features made by another tool (TRIDENT/CLAM per-slide h5 files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvh.cli._app import app, console, guarded, print_json
from mvh.cli._progress import progress_reporter
from mvh.cli._render import JsonOption, StoreOption, print_notes, store_access


@app.command("import")
@guarded
@store_access
def import_cmd(
    h5_dir: Annotated[Path, typer.Argument(help="Folder of TRIDENT/CLAM h5 files (features, coords).")],
    store: StoreOption = "embeddings.lance",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model that made the features, for files that do not name it (CLAM's); must agree with "
            "TRIDENT's `encoder` attribute or mvh's fingerprint where the files carry one.",
        ),
    ] = None,
    mpp: Annotated[
        float | None,
        typer.Option("--mpp", help="um/px of the tiles, for files without target_magnification/mpp."),
    ] = None,
    tile_px: Annotated[
        int | None, typer.Option("--tile-px", help="Tile px, for files without patch_size.")
    ] = None,
    slide_mpp: Annotated[
        float | None,
        typer.Option(
            "--slide-mpp", help="Level-0 um/px, for files without patch_size_level0/level0_magnification."
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="Stored embedding type: float32 | float16 (default: mvh's export's own, else float32).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Index features made by another tool (the model the files name); exit 1 if a file failed."""
    from mvh.interop import ImportConfig, run_import

    cfg = ImportConfig(
        h5_dir=h5_dir,
        store=store,
        model=model,
        mpp=mpp,
        tile_px=tile_px,
        slide_mpp=slide_mpp,
        embedding_dtype=dtype,
    )
    with progress_reporter(enabled=not as_json) as progress:
        result = run_import(cfg, progress=progress)
    if as_json:
        print_json(result.to_dict())
    else:
        model_name = (result.fingerprint or {}).get("model", result.model)
        console.print(
            f"imported {len(result.imported)} slide(s) ({len(result.empty)} empty), {result.n_tiles} tiles "
            f"into {store} as {model_name}; {len(result.failed)} file(s) failed",
            highlight=False,
            soft_wrap=True,
        )
        print_notes([f"failed: {f.error}" for f in result.failed])
    if result.exit_code:
        raise typer.Exit(result.exit_code)
