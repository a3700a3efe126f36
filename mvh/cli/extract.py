"""`mvh extract`: embed the tissue tiles of slides into a store.

`--mpp` is the TARGET resolution of the tiles (as in `mvh tile`); the scan resolution of slides whose
metadata lacks it is given with `--slide-mpp` (or an `mpp` column of `--slides-csv`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import app, console, err_console, guarded, parse_key_values, print_json
from mvh.cli._progress import progress_reporter
from mvh.cli._render import StoreOption, store_access, weights_line
from mvh.errors import UsageError

if TYPE_CHECKING:
    from mvh.extractor.extract_config import ExtractResult


def tile_px_option(tile_px: int | None, tile: int | None, default: int = 224) -> int:
    """The tile side from `--tile-px` or its hidden old name `--tile` (both given and different: exit 2)."""
    if tile_px is not None and tile is not None and tile_px != tile:
        raise UsageError(f"--tile-px {tile_px} and --tile {tile} disagree: give --tile-px only")
    chosen = tile_px if tile_px is not None else tile
    return default if chosen is None else chosen


def _summary_table(result: ExtractResult) -> Table:
    table = Table(title=f"{result.model} -> {result.store}")
    for name in ("slides done", "skipped", "failed", "tiles", "time (s)", "tiles/s"):
        table.add_column(name, justify="right")
    table.add_row(
        str(result.slides_done),
        str(result.slides_skipped),
        f"[red]{result.slides_failed}[/]" if result.slides_failed else "0",
        str(result.tiles),
        f"{result.seconds:.1f}",
        f"{result.tiles_per_s:.1f}",
    )
    return table


@app.command("extract")
@guarded
@store_access
def extract_cmd(
    slides: Annotated[list[Path] | None, typer.Argument(help="Slide files and/or folders of slides.")] = None,
    store: StoreOption = "embeddings.lance",
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
    tile_px: Annotated[
        int | None, typer.Option("--tile-px", help="Tile side in px at --mpp [default: 224].")
    ] = None,
    tile: Annotated[int | None, typer.Option("--tile", hidden=True)] = None,
    min_tissue: Annotated[
        float, typer.Option("--min-tissue", help="Minimum tissue fraction of a tile (0 to 1).")
    ] = 0.25,
    slide_mpp: Annotated[
        float | None, typer.Option("--slide-mpp", help="Scan um/px of slides whose metadata lacks it.")
    ] = None,
    slide_id_from: Annotated[
        str,
        typer.Option(
            "--slide-id-from",
            help="stem: ids are file stems; path: ids are paths below the current folder (a/b.svs -> a__b).",
        ),
    ] = "stem",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.")] = 64,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader processes decoding tiles.")] = 4,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:i")] = "auto",
    devices: Annotated[
        str | None,
        typer.Option("--devices", help="Several devices of this machine, e.g. 0,1: a local Ray instance."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            envvar="RAY_ADDRESS",
            help="Run on a Ray cluster: its address (ray://host:10001, auto) or `local` for this machine.",
        ),
    ] = None,
    ray_cpus_per_worker: Annotated[
        float, typer.Option("--ray-cpus-per-worker", help="CPUs per embedding worker on CPU-only clusters.")
    ] = 1.0,
    ray_workers: Annotated[
        int | None,
        typer.Option(
            "--ray-workers",
            help="Embedding workers (default: one per GPU, else CPUs / --ray-cpus-per-worker).",
        ),
    ] = None,
    ray_max_retries: Annotated[
        int, typer.Option("--ray-max-retries", help="Retries of a slide whose worker died.")
    ] = 2,
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
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Re-embed slides already done (old tiles kept until the new commit)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Embed the tissue tiles of slides into a LanceDB store (resumable; done slides are skipped)."""
    from mvh.extractor.extract import parse_devices, run_extract
    from mvh.extractor.extract_config import ExtractConfig

    cfg = ExtractConfig(
        model=model,
        weights=None if weights is None else str(weights),
        random_init=random_init,
        overrides=parse_key_values(overrides, "--overrides"),
        mpp=mpp,
        tile_px=tile_px_option(tile_px, tile),
        min_tissue=min_tissue,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        dtype=dtype,
        overwrite=overwrite,
        slides=tuple(slides or ()),
        store=store,
        recursive=recursive,
        glob=glob,
        slides_csv=slides_csv,
        slide_mpp=slide_mpp,
        slide_id_from=slide_id_from,
        device=device,
        devices=tuple(parse_devices(devices)),
        ray_address=ray_address,
        ray_cpus_per_worker=ray_cpus_per_worker,
        ray_workers=ray_workers,
        ray_max_retries=ray_max_retries,
    )
    with progress_reporter(enabled=not as_json) as progress:
        result = run_extract(cfg, progress=progress)
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(_summary_table(result))
        console.print(weights_line(result.weights_sha256), highlight=False)
    for r in result.slides:
        if r.status == "failed":
            line = Text.assemble(("failed: ", "bold red"), f"{r.slide_id}: {r.error}")
            err_console.print(line, highlight=False, soft_wrap=True)
    if result.exit_code:
        raise typer.Exit(result.exit_code)
