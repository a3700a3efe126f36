"""`mvh eval retrieval`: patch retrieval metrics from a store and a labels CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import console, eval_app, guarded, print_json
from mvh.cli._render import JsonOption, StoreOption, print_notes, store_access
from mvh.errors import UsageError


def parse_ks(text: str) -> tuple[int, ...]:
    """`1,3,5` -> (1, 3, 5) (UsageError naming --ks otherwise)."""
    try:
        ks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise UsageError(f"--ks {text!r} is not a comma-separated list of integers, e.g. 1,3,5") from exc
    if not ks:
        raise UsageError(f"--ks {text!r}: give positive integers, e.g. 1,3,5")
    return ks


@eval_app.command("retrieval")
@guarded
@store_access
def eval_retrieval_cmd(
    labels: Annotated[
        Path, typer.Option("--labels", help="CSV of tile_id,label or slide_id,label [,patient].")
    ],
    store: StoreOption = "embeddings.lance",
    ks: Annotated[str, typer.Option("--ks", help="Acc@k cut-offs, comma-separated.")] = "1,3,5",
    leave_out: Annotated[
        str,
        typer.Option(
            "--leave-out",
            help="slide (default: never retrieve the query's own slide), patient (needs a patient "
                 "column) or none (only the query tile itself is left out).",
        ),
    ] = "slide",
    out: Annotated[Path | None, typer.Option("--out", help="Also write results.json into this folder.")] = (
        None
    ),
    as_json: JsonOption = False,
) -> None:
    """Patch retrieval: Acc@k, MV@5, mAP@5 by exact search, and the index's recall@k against it."""
    from mvh.cli._progress import progress_reporter
    from mvh.tasks.retrieval import RetrievalConfig, run_retrieval

    cfg = RetrievalConfig(store=store, labels=labels, ks=parse_ks(ks), leave_out=leave_out, out=out)
    with progress_reporter(enabled=not as_json) as progress:
        result = run_retrieval(cfg, progress=progress)
    if as_json:
        print_json(result.to_dict())
        return
    title = (f"retrieval: {result.n_queries} labelled tiles, {result.n_slides} slides, "
             f"leave-out {result.leave_out}")
    table = Table(title=Text(title))
    table.add_column("metric")
    table.add_column("exact", justify="right")
    index = result.index
    if index is not None:
        table.add_column(Text(f"index ({index['description']})"), justify="right")
    for metric, value in result.exact.items():
        cells = [metric, f"{value:.4f}"]
        if index is not None:
            cells.append(f"{index[metric]:.4f}")
        table.add_row(*cells)
    if index is not None:
        for k in result.ks:
            table.add_row(f"recall@{k} vs exact", "1.0000", f"{index[f'recall@{k}']:.4f}")
    console.print(table)
    print_notes(result.notes)
    if out is not None:
        console.print(Text(f"written: {cfg.out / 'results.json'}"))
