"""The Typer apps and the one place where library errors become messages and exit codes."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.text import Text

from mvh import __version__
from mvh.cli._console import console, err_console
from mvh.cli._group import MvhGroup
from mvh.errors import MvhError, UsageError
from mvh.store.location import RedactingFilter, redact_environment

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="mvh",
    help="MV_Hybrid tile embeddings: extract from slides, store, search, evaluate, pretrain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=MvhGroup,
)
index_app = typer.Typer(
    help="Build and inspect FAISS indexes over a store.", no_args_is_help=True, cls=MvhGroup
)
eval_app = typer.Typer(
    help="Evaluations from stored embeddings (the paper's protocols).", no_args_is_help=True, cls=MvhGroup
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mvh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the mvh version and exit."
        ),
    ] = False,
) -> None:
    """MV_Hybrid tile embeddings: extract from slides, store, search, evaluate, pretrain."""


app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")


@contextlib.contextmanager
def _redacted_warnings() -> Iterator[None]:
    """Library warnings on stderr as Python's last-resort handler writes them, with credentials as `***`
    (a warning may quote an object store's error, and such errors quote signed URLs). Where logging is
    configured already (an embedding application, pytest), its handlers are left as they are."""
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def guarded(fn: F) -> F:
    """Turn an `MvhError` raised by the library into a one-line message and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _redacted_warnings():
                return fn(*args, **kwargs)
        except MvhError as exc:
            message = redact_environment(" ".join(str(exc).split()))
            # Text, not markup: messages hold brackets and colons (s1:0:0) Rich would read as markup/emoji
            line = Text.assemble(("error: ", "bold red"), message)
            err_console.print(line, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from exc

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Write `obj` as JSON on stdout (for `--json`)."""
    typer.echo(json.dumps(obj, indent=2, default=str))


def parse_key_values(items: list[str] | None, source: str = "--overrides") -> dict[str, Any]:
    """Repeated and/or comma-separated `key=value` options -> dict (values parsed as YAML scalars).

    `["embed_dim=64,depth=4", "x=0.5"]` -> {"embed_dim": 64, "depth": 4, "x": 0.5}.
    """
    parsed: dict[str, Any] = {}
    for item in (part for entry in items or [] for part in entry.split(",") if part.strip()):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{source}: {item!r} is not key=value; write e.g. embed_dim=64")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


__all__ = [
    "app",
    "console",
    "err_console",
    "eval_app",
    "guarded",
    "index_app",
    "parse_key_values",
    "print_json",
]
