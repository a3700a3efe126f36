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
    """Row ids of the tiles of each (slide_id, commit) in one version of the tiles table, kept as runs
    of consecutive ids: a slide appended in one commit is one run (16 bytes), so the map of a 10M-tile
    store is a few KB a slide, not 8 bytes a tile."""

    version: int
    runs: dict[tuple[str, str | None], np.ndarray]  # [r, 2] int64: first row id, length

    @classmethod
    def scan(cls, table: Any, *, with_commit: bool, batch_rows: int = 262_144) -> SlideRows:
        """Scan the key columns of `table` (a LanceDB table at a fixed version) once, in batches.

        Only runs of row ids are kept; the key strings and ids live one batch at a time.
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
                chunk = np.sort(ids[i].values.to_numpy(zero_copy_only=False).astype(np.int64))
                parts.setdefault(key, []).append(_runs(chunk))
        return cls(version=version, runs={key: _merged(np.concatenate(r)) for key, r in parts.items()})

    def row_ids(self, slide_id: str, commit: str | None) -> np.ndarray:
        """Sorted row ids (uint64) of the tiles of `slide_id` written by `commit` (empty when none)."""
        runs = self.runs.get((slide_id, commit))
        if runs is None:
            return np.empty(0, dtype=np.uint64)
        lengths = runs[:, 1]
        first_position = np.cumsum(lengths) - lengths
        ids = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(runs[:, 0] - first_position, lengths)
        return ids.astype(np.uint64)


def _runs(ids: np.ndarray) -> np.ndarray:
    """Sorted row ids as runs [r, 2] (first id, length) of consecutive ids."""
    cuts = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(ids)]])
    return np.stack([ids[starts], stops - starts], axis=1).astype(np.int64)


def _merged(runs: np.ndarray) -> np.ndarray:
    """Runs sorted by first id, with runs that continue one another (across batches) joined."""
    runs = runs[np.argsort(runs[:, 0], kind="stable")]
    new = np.ones(len(runs), dtype=bool)
    new[1:] = runs[1:, 0] != runs[:-1, 0] + runs[:-1, 1]
    lengths = np.bincount(np.cumsum(new) - 1, weights=runs[:, 1]).astype(np.int64)
    return np.stack([runs[new, 0], lengths], axis=1)
