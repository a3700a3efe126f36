"""CLI commands (placeholder: filled by the issue that owns it)."""

from __future__ import annotations

from mvh.cli._app import app, eval_app, guarded, index_app  # noqa: F401
