"""The two Rich consoles of the CLI: results on stdout, messages and progress on stderr."""

from __future__ import annotations

import os

from rich.console import Console, ConsoleDimensions

# Piped or redirected output has no width to fit: a table keeps every column whole up to this width.
PIPED_WIDTH = 1000


class ResultConsole(Console):
    """A Console that fits a terminal, but never cuts a piped table to 80 columns (Rich's default)."""

    @property  # type: ignore[override]
    def size(self) -> ConsoleDimensions:
        """The terminal's size; PIPED_WIDTH wide when not a terminal and COLUMNS is not set."""
        size = super().size
        if self.is_terminal or "COLUMNS" in os.environ:
            return size
        return ConsoleDimensions(PIPED_WIDTH, size.height)


console = ResultConsole()
err_console = Console(stderr=True)
