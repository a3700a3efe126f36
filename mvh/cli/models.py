"""`mvh models`: the registered backbones, their dims, preprocessing and where their weights come from."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mvh.cli._app import app, console, guarded, print_json


def _triple(values: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


@app.command("models")
@guarded
def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False,
) -> None:
    """List backbones: aliases (e.g. TRIDENT's names), output dim, tile size, mean/std, um/px, weights."""
    from mvh.extractor.models import list_models

    infos = list_models()
    if as_json:
        print_json([info.to_dict() for info in infos])
        return
    table = Table(title="mvh backbones", show_lines=False)
    table.add_column("name", no_wrap=True)
    table.add_column("aliases")
    for column in ("dim", "tile px"):
        table.add_column(column, no_wrap=True)
    table.add_column("mean", min_width=5)
    table.add_column("std", min_width=5)
    table.add_column("um/px", no_wrap=True)
    table.add_column("weights", ratio=1, overflow="fold")
    table.add_column("description", ratio=2, overflow="fold")
    for info in infos:
        table.add_row(
            info.name,
            ", ".join(info.aliases),
            str(info.output_dim),
            str(info.tile_px),
            _triple(info.mean),
            _triple(info.std),
            f"{info.mpp:g}",
            info.weights_source,
            info.description,
        )
    console.print(table)
