"""`mvh sample`: the real sample slide."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvh.cli._app import app, guarded, print_json
from mvh.extractor.sample import sample_slide_path


@app.command("sample")
@guarded
def sample_cmd(
    dest: Annotated[
        Path | None,
        typer.Option("--dest", help="Copy the slide into this folder (default: use it in place)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"path": ...} as JSON.')] = False,
) -> None:
    """Print the path of the real sample slide CMU-1-Small-Region.svs (shared data, cache, or download)."""
    path = sample_slide_path(dest)
    if as_json:
        print_json({"path": str(path)})
    else:
        typer.echo(str(path))
