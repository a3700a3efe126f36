"""Which tile rows a reader sees: one rule, chosen once when a store is opened, used by every read.

A slide's visible tiles are the ones its done slides row names. Two facts about the opened store decide
how that is answered, and both are fixed for the life of a handle:

- the layout. Current stores name a slide's tiles by their commit id: only tiles whose `commit` equals
  the row's commit are seen, so leftovers of a crashed or lost write, and tiles superseded by an
  `--overwrite`, are never read. Legacy stores (written before commit ids) have one write per slide:
  every tile of the slide_id is seen, and the store is never written.
- the handle. A writable handle follows the latest version: it re-reads slide rows and finds a slide's
  tiles with a filter. A frozen handle (`--read-only`, `@tag`, `--store-version`) reads one version:
  its slide rows are read once, and a slide's tiles are taken by their row ids (`mvh.store.slide_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mvh.store.location import StoreLocation
from mvh.store.tables import StoreTables, quote

CURRENT = "current"
LEGACY = "legacy"


@dataclass(frozen=True)
class Visibility:
    """The tile-visibility rule of one opened store: its layout (current|legacy) and whether it is frozen."""

    layout: str
    frozen: bool

    @classmethod
    def choose(cls, tables: StoreTables, location: StoreLocation) -> Visibility:
        """The rule for `tables` opened at `location` (legacy when either table lacks commit ids)."""
        has_commits = "commit" in tables.slides.schema.names and "commit" in tables.tiles.schema.names
        return cls(CURRENT if has_commits else LEGACY, location.read_only or location.pinned)

    @property
    def legacy(self) -> bool:
        """Whether the store predates commit ids (readable, never written)."""
        return self.layout == LEGACY

    @property
    def key(self) -> str:
        """The tiles column whose value says which slide row a tile belongs to."""
        return "slide_id" if self.legacy else "commit"

    @property
    def keys(self) -> tuple[str, ...]:
        """The tiles columns that identify one slide's visible tiles."""
        return ("slide_id",) if self.legacy else ("slide_id", "commit")

    def key_values(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        """The values of `keys` for a done slides row."""
        return tuple(str(row[name]) for name in self.keys)

    def commit_of(self, row: Mapping[str, Any]) -> str | None:
        """The commit a done slides row names (None in a legacy store)."""
        return None if self.legacy else str(row["commit"])

    def slide_filter(self, row: Mapping[str, Any]) -> str:
        """A Lance filter selecting the visible tiles of one done slides row."""
        return " AND ".join(f"{k} = {quote(v)}" for k, v in zip(self.keys, self.key_values(row), strict=True))

    def done_keys(self, done: pd.DataFrame) -> pa.Array:
        """The `key` values of the done slides rows `done` (what visible tiles carry)."""
        return pa.array(list(done[self.key]), pa.string())

    def keep(self, table: pa.Table, done: pd.DataFrame) -> pa.Table:
        """The rows of `table` (holding `key`) that are visible tiles of the `done` slides."""
        return table.filter(pc.is_in(table.column(self.key), value_set=self.done_keys(done)))

    def read_columns(self) -> list[str]:
        """Columns a read must fetch besides those asked for, so that `keep` can be applied."""
        return list(self.keys)
