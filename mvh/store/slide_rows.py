"""Where each slide's tiles sit in one version of the tiles table, so a slide is read by its rows.

A per-slide read through a filter (`slide_id = X AND commit = C`) costs a scalar-index lookup, a refine
pass and then the rows: several object-store requests per slide. A handle that reads one fixed table
version (read-only or pinned) can instead scan the two key columns once, keep the row ids of every
(slide_id, commit) pair, and then read a slide with one `take` of exactly those rows.

The map is exact for the version it was scanned from, whatever the layout: one fragment per slide as
appended, several slides per fragment after compaction, deleted rows (they are not scanned), stores of an
older mvh without commit ids (keyed by slide_id alone). It is only valid for that version: row ids
(row addresses) change when the table is compacted, so `SlideRows.version` is checked on every use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

ROW_ID = "_rowid"


@dataclass(frozen=True)
class SlideRows:
    """Row ids of the tiles of each (slide_id, commit) in one version of the tiles table."""

    version: int
    rows: dict[tuple[str, str | None], np.ndarray]

    @classmethod
    def scan(cls, table: Any, *, with_commit: bool, batch_rows: int = 262_144) -> SlideRows:
        """Scan the key columns of `table` (a LanceDB table at a fixed version) once, in batches.

        Only the row ids are kept (8 bytes a row); the key strings live one batch at a time.
        """
        version = int(table.version)
        keys = ["slide_id", "commit"] if with_commit else ["slide_id"]
        parts: dict[tuple[str, str | None], list[np.ndarray]] = {}
        for batch in table.search().select(keys).with_row_id(True).to_batches(batch_rows):
            grouped = pa.TableGroupBy(pa.Table.from_batches([batch]), keys, use_threads=False).aggregate(
                [(ROW_ID, "list")]
            )
            ids = grouped.column(f"{ROW_ID}_list")
            slide_ids = grouped.column("slide_id").to_pylist()
            commits = grouped.column("commit").to_pylist() if with_commit else [None] * len(slide_ids)
            for i, key in enumerate(zip(slide_ids, commits, strict=True)):
                parts.setdefault(key, []).append(ids[i].values.to_numpy(zero_copy_only=False))
        rows = {key: np.sort(np.concatenate(chunks).astype(np.uint64)) for key, chunks in parts.items()}
        return cls(version=version, rows=rows)

    def row_ids(self, slide_id: str, commit: str | None) -> np.ndarray:
        """Sorted row ids of the tiles of `slide_id` written by `commit` (empty when there are none)."""
        return self.rows.get((slide_id, commit), np.empty(0, dtype=np.uint64))
