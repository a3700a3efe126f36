"""`mvh eval retrieval`: patch retrieval metrics from a store and a labels CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import console, eval_app, guarded, print_json
from mvh.cli._render import JsonOption, StoreOption, print_notes
from mvh.errors import UsageError


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UsageError(f"--k {text!r} is not a comma-separated list of integers, e.g. 1,3,5") from exc
    if not ks or min(ks) < 1:
        raise UsageError(f"--k {text!r}: give positive integers, e.g. 1,3,5")
    return ks


@eval_app.command("retrieval")
@guarded
def eval_retrieval_cmd(
    labels: Annotated[
        Path, typer.Option("--labels", help="CSV of tile_id,label or slide_id,label.")
    ],
    store: StoreOption = "embeddings.lance",
    ks: Annotated[str, typer.Option("--k", help="Acc@k cut-offs, comma-separated.")] = "1,3,5",
    leave_one_slide_out: Annotated[
        bool,
        typer.Option(
            "--leave-one-slide-out/--same-slide-ok",
            help="Never retrieve tiles of the query's own slide (the protocol's default).",
        ),
    ] = True,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON result here.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Patch retrieval: Acc@k, MV@5, mAP@5 by exact search, and the index's recall@k against it."""
    from mvh.tasks.retrieval import run_retrieval_eval

    result = run_retrieval_eval(store, labels, _parse_ks(ks), leave_one_slide_out, out)
    if as_json:
        print_json(result)
        return
    loso = "leave-one-slide-out" if result["leave_one_slide_out"] else "same slide allowed"
    title = f"retrieval: {result['n_queries']} labelled tiles, {result['n_slides']} slides, {loso}"
    table = Table(title=Text(title))
    table.add_column("metric")
    table.add_column("exact", justify="right")
    index = result["index"]
    if index is not None:
        table.add_column(f"index ({index['description']})", justify="right")
    for metric, value in result["exact"].items():
        cells = [metric, f"{value:.4f}"]
        if index is not None:
            cells.append(f"{index[metric]:.4f}")
        table.add_row(*cells)
    if index is not None:
        for k in result["ks"]:
            table.add_row(f"recall@{k} vs exact", "1.0000", f"{index[f'recall@{k}']:.4f}")
    console.print(table)
    print_notes(result["notes"])
    if out is not None:
        console.print(Text(f"written: {out}"))
