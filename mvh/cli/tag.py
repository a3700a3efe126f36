"""`mvh tag create|list|delete`: name a store's current state, to reopen it later as `--store URI@NAME`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import app, console, guarded, print_json
from mvh.cli._group import MvhGroup
from mvh.cli._render import JsonOption, StoreOption, open_store, store_access

tag_app = typer.Typer(
    help="Pin store versions by name (Lance tags on every table).", no_args_is_help=True, cls=MvhGroup
)
app.add_typer(tag_app, name="tag")

NameArgument = Annotated[str, typer.Argument(help="Tag name: letters, digits, '.', '_' and '-'.")]


@tag_app.command("create")
@guarded
@store_access
def tag_create_cmd(
    name: NameArgument,
    store: StoreOption = "embeddings.lance",
    as_json: JsonOption = False,
) -> None:
    """Tag the store's current version of every table as NAME."""
    from mvh.index.index_files import keep_index_for_tag

    opened = open_store(store)
    versions = opened.create_tag(name)
    kept = keep_index_for_tag(opened, name)
    if as_json:
        print_json({"store": store, "tag": name, "versions": versions, "index_kept": kept is not None})
    else:
        console.print(
            Text(
                f"tagged {store} as {name}: slides version {versions['slides']}; "
                f"open it with --store {store}@{name}"
            )
        )
        if kept is not None:
            console.print(Text(kept))


@tag_app.command("list")
@guarded
@store_access
def tag_list_cmd(store: StoreOption = "embeddings.lance", as_json: JsonOption = False) -> None:
    """List the store's tags and the table versions they pin."""
    tags = open_store(store).tags()
    if as_json:
        print_json(tags)
        return
    table = Table(title=Text(f"tags of {store}"))
    for column in ("tag", "slides version", "tiles version", "meta version"):
        table.add_column(column, justify="left" if column == "tag" else "right")
    for tag, versions in tags.items():
        table.add_row(tag, *(str(versions.get(t, "-")) for t in ("slides", "tiles", "meta")))
    console.print(table)


@tag_app.command("delete")
@guarded
@store_access
def tag_delete_cmd(name: NameArgument, store: StoreOption = "embeddings.lance") -> None:
    """Remove tag NAME (the data it pinned stays until the store is cleaned up)."""
    open_store(store).delete_tag(name)
    console.print(Text(f"deleted tag {name} of {store}"))
