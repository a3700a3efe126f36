"""`verify_store`: re-check every done slide of a store without modifying it.

Per done slide: the committed tiles its row counts are all present, tile ids are unique, every value is
finite, the embedding column has the fingerprint's dim and dtype, and the sha256 of the embedding bytes
(as stored, rows in tile_id order) equals the checksum recorded at commit. Invisible leftovers of
interrupted or lost concurrent commits are counted, not reported as problems.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from mvh.errors import StoreError, UsageError
from mvh.jobs import JobResult
from mvh.progress import SLIDES, Event, Progress, report
from mvh.store.schema import DONE, DTYPES, TILES, embedding_checksum
from mvh.store.store import EmbeddingStore

COUNT = "count"
DUPLICATE = "duplicate"
NON_FINITE = "non_finite"
DIM = "dim"
CHECKSUM = "checksum"
NO_CHECKSUM = "no_checksum"
UNREADABLE = "unreadable"
LOST = "lost_commits"
VERSION_HINT = "latest_version_hint.json"


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
    unknown = [s for s in wanted if s not in set(done)]
    if unknown:
        shown = ", ".join(done[:10]) + (f", ... ({len(done)} in all)" if len(done) > 10 else "")
        raise UsageError(
            f"--slide {', '.join(unknown)}: not a done slide of {store.uri} (done slides: {shown or 'none'})"
        )
    report(progress, Event.TOTAL, SLIDES, len(wanted))
    problems: list[Problem] = []
    n_tiles = 0
    for slide_id in wanted:
        n, found = _check_slide(store, slide_id)
        n_tiles += n
        problems += found
        report(progress, Event.ADVANCE, SLIDES)
    problems += lost_commits(store)
    try:
        orphans = store.orphan_tile_count()
    except StoreError as exc:
        orphans = 0
        problems.append(Problem(f"({TILES} table)", UNREADABLE, " ".join(str(exc).split())))
    return VerifyReport(store.uri, len(wanted), n_tiles, orphans, problems)


def lost_commits(store: EmbeddingStore) -> list[Problem]:
    """Tables whose newest commits are gone: Lance's version hint names a version no manifest holds.

    A deleted manifest makes Lance open the version before it, silently: a lost slides version hides the
    slides it committed (their tiles then look like leftovers), a lost tiles version drops their tiles.
    """
    if store.location.pinned:  # a snapshot is older than the hint by design
        return []
    fs, root = store.location.filesystem()
    problems = []
    for name, table in store.tables.by_name().items():
        try:  # the hint first: a commit landing meanwhile only makes the table newer than it
            with fs.open_input_stream(f"{root}/{name}.lance/_versions/{VERSION_HINT}") as stream:
                hinted = int(json.loads(stream.read())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no hint (another Lance, another store kind): nothing to compare with
        if hinted > table.version:
            problems.append(Problem(
                f"({name} table)", LOST,
                f"Lance committed version {hinted} but the newest readable one is {table.version} (a deleted "
                f"manifest in {name}.lance/_versions): restore the store from a copy",
            ))  # fmt: skip
    return problems
