"""Rendering helpers and option types shared by several commands."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.text import Text

from mvh.cli._app import err_console

F = TypeVar("F", bound=Callable[..., Any])

StoreOption = Annotated[
    str,
    typer.Option("--store", help="Store: a directory or an s3://, az:// or gs:// URI; URI@TAG for a tag."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def print_notes(notes: list[str]) -> None:
    """Print library notes on stderr, one `note:` line each."""
    for note in notes:  # Text, not markup: notes quote paths and ids that may hold [brackets] or :colons:
        err_console.print(Text.assemble(("note: ", "yellow"), note), highlight=False, soft_wrap=True)


def weights_line(sha256: str) -> str:
    """`weights: ...` line of a store's fingerprint, loud about random-init weights."""
    from mvh.store import RANDOM_INIT

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


@contextmanager
def store_access_env(
    storage_options: list[str] | None, version: int | None, read_only: bool
) -> Iterator[None]:
    """Hand the access flags to every store the command opens (the environment they are read from),
    restoring the environment afterwards."""
    from mvh.store.location import ENV_OPTIONS, ENV_READ_ONLY, ENV_VERSION, parse_storage_options

    parse_storage_options(storage_options)  # a malformed flag fails here, naming itself
    wanted = {
        ENV_OPTIONS: "\n".join(storage_options) if storage_options else None,
        ENV_VERSION: None if version is None else str(version),
        ENV_READ_ONLY: "1" if read_only else None,
    }
    saved = {key: os.environ.get(key) for key in wanted}
    try:
        for key, value in wanted.items():
            if value is not None:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def store_access(fn: F) -> F:
    """Give a command `--storage-option`, `--store-version` and `--read-only` for the stores it opens."""
    signature = inspect.signature(fn, eval_str=True)
    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = [
        inspect.Parameter("storage_option", keyword, default=None, annotation=StorageOptionsOption),
        inspect.Parameter("store_version", keyword, default=None, annotation=StoreVersionOption),
        inspect.Parameter("read_only", keyword, default=False, annotation=ReadOnlyOption),
    ]

    @functools.wraps(fn)
    def wrapper(
        *args: Any, storage_option: list[str] | None = None, store_version: int | None = None,
        read_only: bool = False, **kwargs: Any,
    ) -> Any:
        with store_access_env(storage_option, store_version, read_only):
            return fn(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **fn.__annotations__, "storage_option": StorageOptionsOption, "store_version": StoreVersionOption,
        "read_only": ReadOnlyOption,
    }
    return wrapper  # type: ignore[return-value]


def open_store(store: str) -> Any:
    """The `EmbeddingStore` a command's `--store` names (with the access flags of `store_access`)."""
    from mvh.store import EmbeddingStore

    return EmbeddingStore.open(store)
