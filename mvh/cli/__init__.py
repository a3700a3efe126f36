"""The `mvh` command line: thin Typer commands, each in the module named after it.

Each module below registers its command on the apps of `mvh.cli._app` when imported.
"""

from __future__ import annotations

from mvh.cli import (  # noqa: F401  (imported for their command registrations)
    card,
    export,
    extract,
    import_,
    index,
    info,
    models,
    overlap,
    pretrain,
    sample,
    search,
    serve,
    tag,
    tile,
    verify,
)
from mvh.cli._app import app
from mvh.cli.eval import classify, retrieval, st, survival  # noqa: F401


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
