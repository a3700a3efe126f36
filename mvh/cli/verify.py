"""`mvh verify`: re-check a store's integrity (reports only; exit 1 when anything is wrong)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import app, console, err_console, guarded, print_json
from mvh.cli._progress import progress_reporter
from mvh.cli._render import JsonOption, StoreOption, store_access


@app.command("verify")
@guarded
@store_access
def verify_cmd(
    store: StoreOption = "embeddings.lance",
    slides: Annotated[
        list[str] | None, typer.Option("--slide", help="Check only this slide id (repeatable).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-check every done slide: tiles present and unique, values finite, dim, checksum of the bytes."""
    from mvh.store import EmbeddingStore
    from mvh.store.integrity import verify_store

    opened = EmbeddingStore.open_snapshot(store)
    with progress_reporter(enabled=not as_json) as progress:
        result = verify_store(opened, slides or None, progress=progress)
    if as_json:
        print_json(result.to_dict())
    else:
        table = Table(title=f"verify {result.store}")
        for name in ("slides", "tiles", "problems", "invisible leftover tiles"):
            table.add_column(name, justify="right")
        table.add_row(
            str(result.n_slides),
            str(result.n_tiles),
            f"[red]{len(result.problems)}[/]" if result.problems else "0",
            str(result.orphan_tiles),
        )
        console.print(table)
        for p in result.problems:
            err_console.print(
                f"[bold red]{p.kind}:[/] {p.slide_id}: {p.detail}", highlight=False, soft_wrap=True
            )
        if result.problems:
            fix = f"re-extract the slides named above with --overwrite, or restore {result.store} from a copy"
            err_console.print(Text(fix), highlight=False, soft_wrap=True)
    if result.exit_code:
        raise typer.Exit(result.exit_code)
