"""`mvh overlap --store A --store B`: slides and near-duplicate tiles that two stores share."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import app, console, guarded, print_json
from mvh.cli._progress import progress_reporter
from mvh.cli._render import JsonOption, open_store, print_notes, store_access
from mvh.errors import UsageError


@app.command("overlap")
@guarded
@store_access
def overlap_cmd(
    store: Annotated[list[str], typer.Option("--store", help="Two stores: --store A --store B.")],
    threshold: Annotated[
        float, typer.Option("--threshold", help="Cosine at or above which two tiles are near-duplicates.")
    ] = 0.95,
    as_json: JsonOption = False,
) -> None:
    """Leakage check before evaluating on another team's cohort: shared slides, near-duplicate tiles."""
    from mvh.overlap import OverlapConfig, run_overlap

    if len(store) != 2:
        raise UsageError(f"--store given {len(store)} time(s): give exactly two, --store A --store B")
    config = OverlapConfig(threshold=threshold)
    a, b = (open_store(s) for s in store)
    with progress_reporter(enabled=not as_json) as progress:
        result = run_overlap(a, b, config, progress=progress)
    if as_json:
        print_json(result.to_dict())
    else:
        table = Table(title=Text(f"overlap of {store[0]} and {store[1]} ({result.model})"), show_header=False)
        table.add_row("slides", f"{result.n_slides_a} / {result.n_slides_b}")
        table.add_row("tiles", f"{result.n_tiles_a} / {result.n_tiles_b}")
        table.add_row("same slide file in both", str(len(result.shared_slides)))
        table.add_row(
            f"tiles of B with a tile of A at cosine >= {threshold:g}", str(result.n_near_duplicate_tiles)
        )
        table.add_row(
            "... of them outside shared slides", str(result.n_near_duplicate_tiles_outside_shared_slides)
        )
        console.print(table)
        for s in result.shared_slides:
            console.print(Text(f"shared slide: {s.slide_a} (A) = {s.slide_b} (B), file hash {s.file_hash}"))
        print_notes(result.notes)
    if result.leakage:
        raise typer.Exit(1)
