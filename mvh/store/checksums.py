"""Reads of whole slides check the checksum each slide's commit recorded (sha256 of its embedding bytes).

Bit rot that leaves values finite passes every NaN/inf check; only the checksum sees it. Every path that
reads all of a slide's vectors anyway (export, index build, overlap, the evaluations' readers) compares
it and stops, naming the slide. The cost is one sha256 over the bytes read (see docs/performance.md).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa

from mvh.errors import StoreDamagedError
from mvh.store.schema import embedding_checksum


def _rotted(uri: str, slides: list[str], non_finite: bool = False) -> StoreDamagedError:
    what = (
        f"non-finite embedding values in slide(s) {slides[:5]} (a damaged data file)" if non_finite
        else f"the embeddings of slide(s) {slides[:5]} differ from those committed (bit rot)"
    )  # fmt: skip
    return StoreDamagedError(
        f"store {uri}: {what}; run `mvh verify --store {uri}`, then re-extract them with --overwrite"
    )


def recorded_sums(done: pd.DataFrame) -> dict[str, str]:
    """slide_id -> the checksum its commit recorded (slides of older stores have none)."""
    if "checksum" not in done:
        return {}
    return {str(s): c for s, c in zip(done["slide_id"], done["checksum"], strict=True) if isinstance(c, str)}


def check_whole_slides(table: pa.Table, done: pd.DataFrame, uri: str) -> None:
    """StoreDamagedError naming the slides of `table` (every tile of each: slide_id, tile_id, embedding)
    whose embedding bytes differ from their recorded checksum."""
    recorded = recorded_sums(done)
    if not recorded or not table.num_rows:
        return
    slide = table.column("slide_id").to_numpy(zero_copy_only=False)
    order = np.argsort(slide, kind="stable")
    names, starts = np.unique(slide[order], return_index=True)
    bad = []
    for name, rows in zip(names, np.split(order, starts[1:]), strict=True):
        want = recorded.get(str(name))
        if want is None:
            continue
        take = pa.array(rows)
        got = embedding_checksum(table.column("tile_id").take(take), table.column("embedding").take(take))
        if got != want:
            bad.append(str(name))
    if bad:
        raise _rotted(uri, bad)


class StreamedSums:
    """Checks slides streamed in batches: a slide's rows are kept until all `n_tiles` arrived, then hashed.

    Rows of one slide sit together in storage (a slide is appended in one commit), so about one slide is
    held at a time.
    """

    def __init__(self, slide_ids: list[str], done: pd.DataFrame, uri: str) -> None:
        by_id = done.set_index("slide_id")
        recorded = recorded_sums(done)
        self.uri = uri
        self.names = slide_ids
        self.want = {k: recorded.get(s) for k, s in enumerate(slide_ids)}
        self.n = {k: int(by_id.loc[s, "n_tiles"]) for k, s in enumerate(slide_ids)}
        self.parts: dict[int, list[pa.RecordBatch]] = defaultdict(list)
        self.seen: dict[int, int] = defaultdict(int)

    def add(self, index: np.ndarray, batch: pa.RecordBatch) -> None:
        """Take one yielded batch (`index`: which slide each row is); check the slides it completes."""
        for k in np.unique(index):
            k = int(k)
            if self.want[k] is None:
                continue
            rows = batch.take(pa.array(np.flatnonzero(index == k)))
            self.parts[k].append(rows.select(["tile_id", "embedding"]))
            self.seen[k] += rows.num_rows
            if self.seen[k] == self.n[k]:
                whole = pa.Table.from_batches(self.parts.pop(k))
                embedding = whole.column("embedding")
                if embedding_checksum(whole.column("tile_id"), embedding) != self.want[k]:
                    values = embedding.combine_chunks().flatten().to_numpy(zero_copy_only=False)
                    raise _rotted(self.uri, [self.names[k]], non_finite=not np.isfinite(values).all())
