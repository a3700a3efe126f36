"""The three Lance tables of an open store, and the small rules every read and write of them follows:
SQL quoting of filter values, retries on commit conflicts, and which errors mean damage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mvh.store.schema import META, SLIDES, TILES

log = logging.getLogger(__name__)

COMMIT_RETRIES = 8
LANCE_ERRORS = (OSError, RuntimeError, ValueError)
T = TypeVar("T")


@dataclass(frozen=True)
class StoreTables:
    """The LanceDB tables of one store, as opened (latest, or checked out at a snapshot)."""

    tiles: Any
    slides: Any
    meta: Any

    def by_name(self) -> dict[str, Any]:
        """name -> table, in the order tiles, slides, meta."""
        return {TILES: self.tiles, SLIDES: self.slides, META: self.meta}


def is_damage(exc: Exception) -> bool:
    """Whether a LanceDB read error means damaged files: Lance's IO and format errors, or a panic of its
    Rust reader (`RustPanic`, a class pyo3 does not export). Never a UsageError (an unknown tag)."""
    return isinstance(exc, LANCE_ERRORS) or type(exc).__name__ == "RustPanic"


def quote(value: str) -> str:
    """A SQL string literal for a Lance filter."""
    return "'" + str(value).replace("'", "''") + "'"


def reason(exc: BaseException) -> str:
    """An exception as one short line (for error messages)."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _is_commit_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return "conflict" in text or "retryable" in text


def retry(op: Callable[[], T], what: str) -> T:
    """Run a Lance write, retrying on commit conflicts with concurrent writers."""
    for attempt in range(COMMIT_RETRIES):
        try:
            return op()
        except LANCE_ERRORS as exc:
            if not _is_commit_conflict(exc) or attempt == COMMIT_RETRIES - 1:
                raise
            log.debug("commit conflict on %s (attempt %d): %s", what, attempt + 1, exc)
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")
