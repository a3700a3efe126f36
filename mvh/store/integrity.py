"""`verify_store`: re-check every done slide of a store without modifying it.

Per done slide: the committed tiles its row counts are all present, tile ids are unique, every value is
finite, the embedding column has the fingerprint's dim and dtype, and the sha256 of the embedding bytes
(as stored, rows in tile_id order) equals the checksum recorded at commit. Invisible leftovers of
interrupted or lost concurrent commits are counted, not reported as problems.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from mvh.errors import StoreError
from mvh.jobs import JobResult
from mvh.progress import SLIDES, Event, Progress, report
from mvh.store.schema import DONE, DTYPES, embedding_checksum
from mvh.store.store import EmbeddingStore

COUNT = "count"
DUPLICATE = "duplicate"
NON_FINITE = "non_finite"
DIM = "dim"
CHECKSUM = "checksum"
NO_CHECKSUM = "no_checksum"
UNREADABLE = "unreadable"
ABSENT = "absent"


@dataclass
class Problem:
    """One thing wrong with one slide: `kind` (count, duplicate, non_finite, dim, checksum...) and detail."""

    slide_id: str
    kind: str
    detail: str


@dataclass
class VerifyReport(JobResult, job="verify"):
    """What `verify_store` found: slides and tiles checked, problems, invisible leftover tile rows."""

    store: str
    n_slides: int
    n_tiles: int
    orphan_tiles: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def exit_code(self) -> int:
        """0 when the store is intact, 1 otherwise."""
        return 0 if self.ok else 1


def _check_slide(store: EmbeddingStore, slide_id: str) -> tuple[int, list[Problem]]:
    """Tiles read and problems of one done slide."""
    try:
        row, table = store.raw_slide_tiles(slide_id, ["tile_id", "embedding"])
    except StoreError as exc:
        return 0, [Problem(slide_id, UNREADABLE, " ".join(str(exc).split()))]
    problems = []
    n = table.num_rows
    if n != int(row["n_tiles"]):
        problems.append(Problem(slide_id, COUNT, f"{n} tiles stored, its row counts {int(row['n_tiles'])}"))
    ids = table.column("tile_id")
    n_unique = len(pa.compute.unique(ids)) if n else 0
    if n_unique != n:
        problems.append(Problem(slide_id, DUPLICATE, f"{n - n_unique} duplicate tile ids"))
    fp = store.fingerprint
    column_type = table.schema.field("embedding").type
    expected = pa.list_(DTYPES[fp.embedding_dtype], fp.embed_dim)
    if column_type != expected:
        problems.append(
            Problem(slide_id, DIM, f"embedding column is {column_type}, fingerprint says {expected}")
        )
        return n, problems
    embedding = table.column("embedding")
    values = embedding.combine_chunks().flatten().to_numpy(zero_copy_only=False) if n else np.empty(0)
    bad_values = int((~np.isfinite(values)).sum())
    if bad_values:
        problems.append(Problem(slide_id, NON_FINITE, f"{bad_values} NaN/inf values"))
    recorded = row.get("checksum")
    if not isinstance(recorded, str):
        problems.append(Problem(slide_id, NO_CHECKSUM, "no checksum was recorded at commit"))
    elif embedding_checksum(ids, embedding) != recorded:
        problems.append(Problem(slide_id, CHECKSUM, "embedding bytes differ from those committed"))
    return n, problems


def verify_store(
    store: EmbeddingStore, slide_ids: Sequence[str] | None = None, *, progress: Progress | None = None
) -> VerifyReport:
    """Check every done slide (or `slide_ids`) of `store`; reports, never modifies."""
    done = store.slide_ids(DONE)
    wanted = done if slide_ids is None else list(dict.fromkeys(str(s) for s in slide_ids))
    report(progress, Event.TOTAL, SLIDES, len(wanted))
    problems: list[Problem] = []
    n_tiles = 0
    done_set = set(done)
    for slide_id in wanted:
        if slide_id not in done_set:
            problems.append(Problem(slide_id, ABSENT, "not a done slide of the store"))
        else:
            n, found = _check_slide(store, slide_id)
            n_tiles += n
            problems += found
        report(progress, Event.ADVANCE, SLIDES)
    return VerifyReport(store.uri, len(wanted), n_tiles, store.orphan_tile_count(), problems)
