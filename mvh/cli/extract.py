"""`mvh extract`: embed the tissue tiles of slides into a store.

`--mpp` is the TARGET resolution of the tiles (as in `mvh tile`); the scan resolution of slides whose
metadata lacks it is given with `--slide-mpp` (or an `mpp` column of `--slides-csv`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from mvh.cli._app import app, console, err_console, guarded, parse_key_values, print_json
from mvh.cli._render import weights_line

if TYPE_CHECKING:
    from mvh.extractor.extract import ExtractSummary


class _RateColumn(ProgressColumn):
    """Tiles per second of a task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} tiles/s", style="progress.data.speed")


class _Bars:
    """Rich bars driven by the library's progress events: one for slides, one for tiles."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.slides = progress.add_task("slides", total=None)
        self.tiles = progress.add_task("tiles", total=0)

    def __call__(self, event: str, n: int) -> None:
        p = self.progress
        if event == "slides_total":
            p.update(self.slides, total=n)
        elif event in ("slide_done", "slide_failed", "slide_skipped"):
            p.update(self.slides, advance=n)
        elif event == "tiles_total":
            p.update(self.tiles, total=(p.tasks[self.tiles].total or 0) + n)
        elif event == "tiles":
            p.update(self.tiles, advance=n)


def _summary_table(summary: ExtractSummary) -> Table:
    d = summary.to_dict()
    table = Table(title=f"{summary.model} -> {summary.store}")
    for name in ("slides done", "skipped", "failed", "tiles", "time (s)", "tiles/s"):
        table.add_column(name, justify="right")
    table.add_row(
        str(d["slides_done"]),
        str(d["slides_skipped"]),
        f"[red]{d['slides_failed']}[/]" if d["slides_failed"] else "0",
        str(d["tiles"]),
        f"{d['seconds']:.1f}",
        f"{d['tiles_per_s']:.1f}",
    )
    return table


@app.command("extract")
@guarded
def extract_cmd(
    slides: Annotated[list[Path] | None, typer.Argument(help="Slide files and/or folders of slides.")] = None,
    store: Annotated[
        str, typer.Option("--store", help="Store directory (or any LanceDB URI).")
    ] = "embeddings.lance",
    model: Annotated[str, typer.Option("--model", help="Backbone name (see `mvh models`).")] = "mv_hybrid",
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Checkpoint file of the backbone.")
    ] = None,
    random_init: Annotated[
        bool,
        typer.Option("--random-init", help="Embed with seeded random weights (recorded as random-init)."),
    ] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--overrides",
            help="Architecture overrides key=value (recorded in the store), e.g. depth=2,embed_dim=32.",
        ),
    ] = None,
    mpp: Annotated[float, typer.Option("--mpp", help="Target resolution of the tiles, um/px.")] = 0.5,
    tile: Annotated[int, typer.Option("--tile", help="Tile side in px at --mpp.")] = 224,
    min_tissue: Annotated[
        float, typer.Option("--min-tissue", help="Minimum tissue fraction of a tile.")
    ] = 0.25,
    slide_mpp: Annotated[
        float | None, typer.Option("--slide-mpp", help="Scan um/px of slides whose metadata lacks it.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.")] = 64,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader processes decoding tiles.")] = 4,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:i")] = "auto",
    devices: Annotated[
        str | None, typer.Option("--devices", help="Several devices, e.g. 0,1 (one process per device).")
    ] = None,
    precision: Annotated[
        str, typer.Option("--precision", help="auto | fp32 | bf16 | fp16 (GPU only).")
    ] = "auto",
    dtype: Annotated[
        str, typer.Option("--dtype", help="Stored embedding type: float32 | float16.")
    ] = "float32",
    recursive: Annotated[bool, typer.Option("--recursive", help="Search folders recursively.")] = False,
    glob: Annotated[str | None, typer.Option("--glob", help='File pattern in folders, e.g. "*.svs".')] = None,
    slides_csv: Annotated[
        Path | None, typer.Option("--slides-csv", help="CSV with a `path` column and optional `mpp`.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Re-embed slides already done.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Embed the tissue tiles of slides into a LanceDB store (resumable; done slides are skipped)."""
    from mvh.extractor.extract import ExtractConfig, extract_slides, parse_devices

    cfg = ExtractConfig(
        model=model,
        weights=None if weights is None else str(weights),
        random_init=random_init,
        overrides=parse_key_values(overrides, "--overrides"),
        mpp=mpp,
        tile_px=tile,
        min_tissue=min_tissue,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        dtype=dtype,
        overwrite=overwrite,
    )
    columns: list[Any] = [
        TextColumn("[bold]{task.description:>6}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console, transient=True, disable=as_json) as progress:
        summary = extract_slides(
            slides or [],
            store,
            cfg,
            recursive=recursive,
            glob=glob,
            slides_csv=slides_csv,
            slide_mpp=slide_mpp,
            device=device,
            devices=parse_devices(devices),
            progress=_Bars(progress),
        )
    if as_json:
        print_json(summary.to_dict())
    else:
        console.print(_summary_table(summary))
        console.print(weights_line(summary.weights_sha256), highlight=False)
    for r in summary.slides:
        if r.status == "failed":
            err_console.print(
                f"[bold red]failed:[/] {r.slide_id}: {r.error}", highlight=False, soft_wrap=True
            )
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)
