"""Rendering helpers and option types shared by several commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from mvh.cli._app import err_console

StoreOption = Annotated[str, typer.Option("--store", help="Store directory (or LanceDB URI).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def print_notes(notes: list[str]) -> None:
    """Print library notes on stderr, one `note:` line each."""
    for note in notes:  # Text, not markup: notes quote paths and ids that may hold [brackets] or :colons:
        err_console.print(Text.assemble(("note: ", "yellow"), note), highlight=False, soft_wrap=True)


def weights_line(sha256: str) -> str:
    """`weights: ...` line of a store's fingerprint, loud about random-init weights."""
    from mvh.index.store import RANDOM_INIT

    if sha256 == RANDOM_INIT:
        return "weights: random-init (NOT trained weights: for trying the pipeline, not for results)"
    return f"weights: sha256 {sha256}"


def fmt_mean_std(mean: Any, std: Any = None) -> str:
    """`0.412 ± 0.031`, `0.412`, or `n/a` for a missing/NaN mean."""
    if mean is None or mean != mean:
        return "n/a"
    return f"{mean:.3f}" if std is None or std != std else f"{mean:.3f} ± {std:.3f}"


StorageOptionsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        help="Object-store setting KEY=VALUE passed to LanceDB (repeatable), e.g. aws_region=eu-west-1.",
    ),
]
StoreVersionOption = Annotated[
    int | None,
    typer.Option("--store-version", help="Open this version of the store (see `mvh info`), or use URI@TAG."),
]
ReadOnlyOption = Annotated[
    bool, typer.Option("--read-only", help="Open the store without ever writing to it.")
]


def open_store(
    store: str, storage_options: list[str] | None = None, version: int | None = None, read_only: bool = False
) -> Any:
    """The `EmbeddingStore` named by `--store`, `--storage-option`, `--store-version` and `--read-only`."""
    from mvh.index.location import parse_location
    from mvh.index.store import EmbeddingStore

    location = parse_location(store, storage_options=storage_options, version=version, read_only=read_only)
    return EmbeddingStore.open(location)
