"""`mvh tile`: tissue tile grids at an exact um/px.

`--mpp` is the TARGET resolution of the tiles (as in `mvh extract --mpp 0.5`); the scan resolution of a
slide without metadata (a PNG tile...) is given with `--slide-mpp`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import app, console, err_console, guarded, print_json
from mvh.cli._progress import progress_reporter
from mvh.cli.extract import tile_px_option


@app.command("tile")
@guarded
def tile_cmd(
    slides: Annotated[
        list[Path], typer.Argument(help="Slides (svs, ndpi, mrxs, scn, tiff, dcm) or png/jpg/tif images.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for <slide_id>.tiles.parquet (+ .preview.png).")
    ] = Path("tiles"),
    mpp: Annotated[float, typer.Option("--mpp", help="Target resolution of the tiles, um/px.")] = 0.5,
    tile_px: Annotated[
        int | None,
        typer.Option("--tile-px", help="Tile side in px at --mpp (224 at 0.5 = 112 um) [default: 224]."),
    ] = None,
    tile: Annotated[int | None, typer.Option("--tile", hidden=True)] = None,
    overlap: Annotated[int, typer.Option("--overlap", help="Overlap between tiles, px at --mpp.")] = 0,
    min_tissue: Annotated[
        float, typer.Option("--min-tissue", help="Fraction of a tile that must be tissue to keep it.")
    ] = 0.25,
    slide_mpp: Annotated[
        float | None,
        typer.Option("--slide-mpp", help="Scan resolution of the slides in um/px; overrides their metadata."),
    ] = None,
    preview: Annotated[
        bool, typer.Option("--preview", help="Also write a PNG: thumbnail, tissue mask and tile grid.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the per-slide summary as JSON.")] = False,
) -> None:
    """Detect tissue and write the tile grid of each slide at an exact um/px (Parquet, optional preview)."""
    from mvh.extractor.tile_slides import tile_slides  # imaging stack loaded only when tiling

    tile = tile_px_option(tile_px, tile)
    with progress_reporter(enabled=not as_json and len(slides) > 1) as progress:
        results = tile_slides(
            slides,
            out,
            mpp=mpp,
            tile_px=tile,
            overlap=overlap,
            min_tissue=min_tissue,
            slide_mpp=slide_mpp,
            preview=preview,
            progress=progress,
        )
    failed = [r for r in results if r.error is not None]
    if len(results) == 1 and failed:
        raise failed[0].error  # type: ignore[misc]
    if as_json:
        print_json([r.to_dict() for r in results])
    else:
        table = Table(title=f"tiles of {tile} px at {mpp} um/px ({tile * mpp:g} um)")
        for name in ("slide", "mpp", "level", "tiles", "tissue %", "status"):
            table.add_column(name, justify="left" if name in ("slide", "status") else "right")
        for r in results:
            d = r.to_dict()
            if r.error is not None:
                table.add_row(r.slide_id, _mpp_text(d), "-", "-", "-", "[red]failed[/]")
            else:
                table.add_row(
                    r.slide_id,
                    _mpp_text(d),
                    str(d["level"]),
                    str(d["n_tiles"]),
                    f"{100 * (r.tissue_fraction or 0):.1f}",
                    "done",
                )
        console.print(table)
        written = [p for r in results for p in (r.parquet, r.preview) if p is not None]
        if written:
            console.print(f"wrote {len(written)} file(s) to {out}", highlight=False)
    for r in failed:
        line = Text.assemble(("error: ", "bold red"), " ".join(str(r.error).split()))
        err_console.print(line, highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _mpp_text(d: dict[str, object]) -> str:
    if d["slide_mpp"] is None:
        return "-"
    return f"{d['slide_mpp']:.4g}" + (" (user)" if d["mpp_source"] == "user" else "")
