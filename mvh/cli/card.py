"""`mvh card`: write a store's dataset card (Markdown + YAML front matter) beside its tables and to a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from mvh.cli._app import app, console, guarded, print_json
from mvh.cli._render import JsonOption, StoreOption, open_store, store_access


@app.command("card")
@guarded
@store_access
def card_cmd(
    store: StoreOption = "embeddings.lance",
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the card into this folder (as CARD.md).")
    ] = None,
    set_fields: Annotated[
        list[str] | None,
        typer.Option("--set", help="Owner's field FIELD=VALUE (owner, license, contact, description...)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Describe a store for people and machines: model, weights, geometry, slides, tools, owner, licence."""
    from mvh.store.card import build_card, parse_card_fields, write_card

    fields = parse_card_fields(set_fields)
    if as_json and not fields and out is None:  # a read: the card as it stands now, the store untouched
        print_json(build_card(open_store(store)).to_dict())
        return
    card, written = write_card(open_store(store), fields, out)
    if as_json:
        print_json(card.to_dict())
        return
    console.print(Text(card.to_markdown()))
    for place in written:
        console.print(Text(f"card written: {place}"))
