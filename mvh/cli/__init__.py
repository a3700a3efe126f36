"""The `mvh` command line: thin Typer commands, one module per group of user jobs.

Each module below registers its commands on the apps of `mvh.cli._app` when imported.
"""

from __future__ import annotations

from mvh.cli import (  # noqa: F401  (imported for their command registrations)
    eval_st,
    eval_survival,
    models,
    pretrain,
    search,
    slides,
    store,
)
from mvh.cli._app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
