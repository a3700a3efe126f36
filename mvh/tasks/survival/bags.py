"""Patient bags: every tile embedding of a patient's slides, read from the store in one scan.

A cohort of a thousand slides used to cost one filtered LanceDB scan per slide (most of a GBSG2-scale
run). `StoreBags.load` instead counts each slide's rows from the store's `slides` table, allocates one
array for the whole cohort (memory-mapped from a temporary file above 1 GiB,
`mvh.tasks.stores.allocate`, so a 10M-tile cohort never has to fit in RAM, and its pages leave the
process's resident set every 256 MB written or read: `mvh.tasks.stores.MappedPages`), streams the
`tiles` table once (filtered to the cohort's slides) and writes each batch straight to its rows;
patient bags are then contiguous views of that array. Within a slide, tiles are ordered by (y, x, tile_id), as
`EmbeddingStore.slide_embeddings` orders them. Embeddings keep the store's dtype (float16 stores stay
half the size in memory); training casts each batch to float32.

Visibility follows the store's rules: the scan runs on the store's own (possibly version-pinned) tiles
table and keeps only the rows of each slide's committed write (the `commit` its done row names; by
slide id in stores written before commits existed). Row counts and finiteness are checked as
`EmbeddingStore` checks them (StoreDamagedError). The peak stays near one copy in the store's dtype
(a whole-store float32 read would be four times a float16 store's bytes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import overload

import numpy as np
import pyarrow as pa

from mvh.errors import DataError, StoreDamagedError, StoreError
from mvh.progress import TILES as TILES_TASK
from mvh.progress import Event, Progress, report
from mvh.store import DONE, EmbeddingStore
from mvh.store.schema import TILES
from mvh.tasks.stores import MappedPages, allocate
from mvh.tasks.survival.cohort import listing

SCAN_BATCH_ROWS = 65536



def _ranks_within_groups(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... counted separately for each value of `group` [N], in row order."""
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    starts = np.r_[True, sorted_group[1:] != sorted_group[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order)) - first
    return ranks


def _non_finite_rows(values: np.ndarray) -> np.ndarray:
    """Rows [N] of `values` [N, dim] (float16/32) holding NaN or inf: all exponent bits set, read as ints."""
    bits = {2: (np.uint16, 0x7C00), 4: (np.uint32, 0x7F800000)}.get(values.dtype.itemsize)
    if bits is None:
        return ~np.isfinite(values).all(axis=1)
    view, mask = bits
    exponent = values.view(view) & view(mask)
    if not (exponent == mask).any():
        return np.zeros(len(values), dtype=bool)
    return (exponent == mask).any(axis=1)


def _copy_runs(dest: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """dest[rows] = values, as one slice copy per run of consecutive rows (a batch is a few runs)."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
        dest[rows[start] : rows[start] + stop - start] = values[start:stop]


def _sort_within_slides(
    embeddings: np.ndarray, coords: np.ndarray, offsets: np.ndarray,
    id_chunks: list[tuple[pa.Array, np.ndarray]], pages: MappedPages,
) -> None:
    """Reorder each slide's rows [offsets[i], offsets[i+1]) by (y, x, tile_id) in place."""
    slide_of_row = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    perm = np.lexsort((coords[:, 0], coords[:, 1], slide_of_row))
    same = (np.diff(slide_of_row[perm]) == 0) & (np.diff(coords[perm], axis=0) == 0).all(axis=1)
    if same.any():  # tiles sharing a position (rare): the tile id decides, as in the store's reads
        tile_ids = np.empty(len(coords), dtype=object)
        for chunk, rows in id_chunks:
            tile_ids[rows] = chunk.to_numpy(zero_copy_only=False)
        perm = np.lexsort((tile_ids, coords[:, 0], coords[:, 1], slide_of_row))
    moved = np.flatnonzero(perm != np.arange(len(perm)))
    for i in np.unique(slide_of_row[moved]):
        start, stop = int(offsets[i]), int(offsets[i + 1])
        block = perm[start:stop]
        embeddings[start:stop] = embeddings[block]
        coords[start:stop] = coords[block]
        pages.touched(2 * embeddings[start:stop].nbytes)


class StoreBags(Mapping[str, np.ndarray]):
    """patient_id -> tile embeddings [N_i, dim] of all its slides (slides in the given order)."""

    def __init__(
        self,
        embeddings: np.ndarray,
        coords: np.ndarray,
        slides_by_patient: Mapping[str, Sequence[str]],
        slide_rows: Mapping[str, tuple[int, int]],
    ) -> None:
        self.embeddings = embeddings
        self._pages = MappedPages(embeddings)  # a memory-mapped cohort: bags read back a few at a time
        self.coords = coords
        self.slides_by_patient = {str(k): list(v) for k, v in slides_by_patient.items()}
        self.slide_rows = dict(slide_rows)

    @classmethod
    def load(
        cls,
        store: EmbeddingStore,
        slides_by_patient: Mapping[str, Sequence[str]],
        *,
        batch_rows: int = SCAN_BATCH_ROWS,
        progress: Progress | None = None,
    ) -> StoreBags:
        """Read every tile of the patients' slides in one scan of the store's tiles table."""
        order = [str(s) for slides in slides_by_patient.values() for s in slides]
        repeated = sorted(s for s, n in Counter(order).items() if n > 1)
        if repeated:
            raise DataError(f"slide(s) {listing(repeated)} belong to several patients; keep one per slide")
        done = store.slides(status=DONE).set_index("slide_id")
        absent = [s for s in order if s not in done.index]
        if absent:
            raise StoreError(
                f"slide(s) {listing(absent)} are not done in store {store.uri}; extract them or drop them"
            )
        rows_of = done.reindex(order)
        counts = rows_of["n_tiles"].to_numpy(np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        dtype = store.schema()[TILES].field("embedding").type.value_type.to_pandas_dtype()
        embeddings = allocate(int(offsets[-1]), store.dim, dtype)  # memory-mapped above 1 GiB
        pages = MappedPages(embeddings)  # written pages leave the RSS every 256 MB
        coords = np.empty((int(offsets[-1]), 2), dtype=np.int64)
        fill = offsets[:-1].copy()
        id_chunks: list[tuple[pa.Array, np.ndarray]] = []
        report(progress, Event.TOTAL, TILES_TASK, int(offsets[-1]))
        for slide, batch in store.scan_tiles(order, ("tile_id", "x", "y", "embedding"), batch_rows):
            rows = fill[slide] + _ranks_within_groups(slide)
            fill += np.bincount(slide, minlength=len(order))
            over = rows >= offsets[slide + 1]
            if over.any():
                extra = sorted({order[i] for i in slide[over]})
                raise StoreDamagedError(
                    f"store {store.uri}: slide(s) {listing(extra)} have more tile rows than their "
                    "recorded n_tiles (duplicated tiles); re-extract them with --overwrite"
                )
            values = batch.column("embedding").flatten().to_numpy(zero_copy_only=False).reshape(-1, store.dim)
            bad = _non_finite_rows(values)
            if bad.any():
                broken = sorted({order[i] for i in slide[bad]})
                raise StoreDamagedError(
                    f"store {store.uri}: slide(s) {listing(broken)} hold NaN or inf embeddings "
                    "(damaged data); re-extract them with --overwrite"
                )
            _copy_runs(embeddings, rows, values)
            pages.touched(values.nbytes)
            coords[rows, 0] = batch.column("x").to_numpy()
            coords[rows, 1] = batch.column("y").to_numpy()
            # a copy: a column of the batch would keep the whole batch (its embeddings) alive
            id_chunks.append((pa.concat_arrays([batch.column("tile_id")]), rows))
            report(progress, Event.ADVANCE, TILES_TASK, len(rows))
        short = [order[i] for i in np.flatnonzero(fill != offsets[1:])]
        if short:
            raise StoreDamagedError(
                f"store {store.uri}: slide(s) {listing(short)} have fewer tile rows than their recorded "
                "n_tiles (damaged store); re-extract them with --overwrite"
            )
        _sort_within_slides(embeddings, coords, offsets, id_chunks, pages)
        slide_rows = {s: (int(offsets[i]), int(offsets[i + 1])) for i, s in enumerate(order)}
        return cls(embeddings, coords, slides_by_patient, slide_rows)

    def _patient_rows(self, patient_id: str) -> tuple[int, int]:
        slides = self.slides_by_patient[patient_id]
        if not slides:
            return 0, 0
        return self.slide_rows[slides[0]][0], self.slide_rows[slides[-1]][1]

    def __getitem__(self, patient_id: str) -> np.ndarray:
        start, stop = self._patient_rows(patient_id)
        bag = self.embeddings[start:stop]
        self._pages.touched(bag.nbytes)  # may unmap earlier bags' pages: views stay valid, read from the file
        return bag

    def slide_span(self, patient_id: str, slide_id: str) -> tuple[int, int]:
        """Rows [start, stop) of `slide_id` inside the bag of `patient_id`."""
        first = self._patient_rows(patient_id)[0]
        start, stop = self.slide_rows[slide_id]
        return start - first, stop - first

    def slide_coords(self, slide_id: str) -> np.ndarray:
        """Level-0 (x, y) [N, 2] of a slide's tiles, in the bag's row order."""
        start, stop = self.slide_rows[slide_id]
        return self.coords[start:stop]

    def __iter__(self) -> Iterator[str]:
        return iter(self.slides_by_patient)

    def __len__(self) -> int:
        return len(self.slides_by_patient)


class BagList(Sequence[np.ndarray]):
    """The bags of `patient_ids`, each taken from `bags` only when indexed.

    A list of a memory-mapped cohort's bags would hold views whose pages stay mapped once read, so a pass
    over them maps the whole cohort; taken one at a time, `StoreBags` lets earlier bags' pages go.
    """

    def __init__(self, bags: Mapping[str, np.ndarray], patient_ids: Sequence[str]) -> None:
        self._bags, self._ids = bags, list(patient_ids)

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, i: slice) -> BagList: ...

    def __getitem__(self, i: int | slice) -> np.ndarray | BagList:
        if isinstance(i, slice):
            return BagList(self._bags, self._ids[i])
        return self._bags[self._ids[i]]


def mean_pool(bags: Mapping[str, np.ndarray], patient_ids: Sequence[str]) -> np.ndarray:
    """Mean tile embedding of each patient's bag -> [P, dim] float64."""
    return np.stack([np.asarray(bags[p], dtype=np.float64).mean(axis=0) for p in patient_ids])
