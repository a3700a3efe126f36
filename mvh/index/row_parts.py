"""The rows behind a FAISS index, on disk: row i of the index -> its tile, and its stored vector.

An index over N tiles keeps no copy of the tiles in RAM. Its rows live in parts, one per shard of
slides added (a build has one or more; an `--update` adds one): `part-<id>.arrow` (an uncompressed
Arrow IPC file: slide_id, tile_id, x, y, tile_px, mpp, and `slide_code`, the slide's position in the
part's slide list) and `part-<id>.npy` (the embeddings exactly as stored, float16 or float32, in index
row order). The Arrow file is memory-mapped (a search touches only the pages of its hits). A re-rank
reads the stored vectors of its candidates by row id (the "refine" of an IVF-PQ index) with positional
reads (`VectorFile`) that leave no pages in the process, instead of holding them in RAM. Part files are
immutable, so builds that share a part (an update, a kept tagged build) name the same files.

`FrameRows` is the in-memory equivalent (a DataFrame and optional vectors) for indexes built from an
array (tests, benchmarks of the index alone).
"""

from __future__ import annotations

import os
import uuid
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mvh.errors import StoreDamagedError, StoreError

READ_THREADS = 8  # concurrent positional reads of one re-rank
THREADED_READ_RUNS = 256  # fewer runs of rows than this are read in the calling thread
ROW_COLUMNS = ("slide_id", "tile_id", "x", "y", "tile_px", "mpp")
CODE = "slide_code"


class RowSource(Protocol):
    """Row i of an index -> its tile row, and (for a re-rank) its stored vector."""

    @property
    def n(self) -> int:
        """Number of rows."""

    def take(self, ids: np.ndarray) -> pd.DataFrame:
        """Tile rows (ROW_COLUMNS) of row ids `ids`, in that order."""

    def vectors(self, ids: np.ndarray) -> np.ndarray | None:
        """Stored vectors [len(ids), dim] float32 of row ids `ids` (None when none are kept)."""

    def slide_mask(self, slide_ids: Sequence[str]) -> np.ndarray:
        """Bool [n]: True for rows of the given slides."""

    def tile_rows(self, tile_ids: Sequence[str]) -> np.ndarray:
        """Row ids of the given tile ids (-1 for ids not held)."""

    def find(self, slide_id: str, x: int, y: int) -> int:
        """The row id of the tile of `slide_id` at level-0 (x, y) (-1 when none)."""


@dataclass
class FrameRows:
    """Rows held in memory: a DataFrame (ROW_COLUMNS) and, optionally, the vectors [n, dim]."""

    frame: pd.DataFrame
    stored: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of rows."""
        return len(self.frame) if len(self.frame.columns) or self.stored is None else len(self.stored)

    def take(self, ids: np.ndarray) -> pd.DataFrame:
        """Tile rows of row ids `ids`."""
        return self.frame.iloc[np.asarray(ids, dtype=np.int64)].reset_index(drop=True)

    def vectors(self, ids: np.ndarray) -> np.ndarray | None:
        """The kept vectors of `ids` as float32."""
        return None if self.stored is None else np.asarray(self.stored[ids], dtype=np.float32)

    def slide_mask(self, slide_ids: Sequence[str]) -> np.ndarray:
        """Bool [n]: rows of the given slides."""
        return self.frame["slide_id"].isin(list(slide_ids)).to_numpy()

    def tile_rows(self, tile_ids: Sequence[str]) -> np.ndarray:
        """Row ids of `tile_ids` (-1 when not held)."""
        position = pd.Series(np.arange(len(self.frame)), index=self.frame["tile_id"].to_numpy())
        return position.reindex(list(tile_ids)).fillna(-1).to_numpy(np.int64)

    def find(self, slide_id: str, x: int, y: int) -> int:
        """Row id of the tile at (x, y) of `slide_id` (-1 when none)."""
        f = self.frame
        hit = np.flatnonzero(((f["slide_id"] == slide_id) & (f["x"] == x) & (f["y"] == y)).to_numpy())
        return int(hit[0]) if len(hit) else -1


def part_files(part_id: str) -> tuple[str, str]:
    """The file names (rows, vectors) of part `part_id`."""
    return f"part-{part_id}.arrow", f"part-{part_id}.npy"


class PartWriter:
    """Writes one part from tile batches: rows to Arrow IPC, stored vectors to a preallocated .npy.

    `n` (the part's tile count, known from the slides rows) sizes the vector file up front, so nothing
    is held beyond one batch. `close()` checks that exactly `n` rows arrived.
    """

    def __init__(self, folder: Path, slides: Sequence[str], n: int, dim: int, dtype: str) -> None:
        self.part_id = uuid.uuid4().hex[:12]
        self.folder = folder
        self.slides = [str(s) for s in slides]
        self._code = {s: i for i, s in enumerate(self.slides)}
        self.n, self.written = int(n), 0
        rows_name, vec_name = part_files(self.part_id)
        self._dtype = np.dtype(dtype)
        header = np.lib.format.open_memmap(
            folder / vec_name, mode="w+", dtype=self._dtype, shape=(self.n, dim)
        )
        self._offset, self._row_bytes = int(header.offset), dim * self._dtype.itemsize
        del header  # the .npy header is written; vectors go in by pwrite, never mapped (no file pages in RSS)
        self._file = open(folder / vec_name, "r+b")  # noqa: SIM115 (closed by close())
        os.posix_fallocate(self._file.fileno(), 0, os.fstat(self._file.fileno()).st_size)  # full disk: here
        schema = pa.schema(
            [
                pa.field("slide_id", pa.string()),
                pa.field("tile_id", pa.string()),
                pa.field("x", pa.int64()),
                pa.field("y", pa.int64()),
                pa.field("tile_px", pa.int32()),
                pa.field("mpp", pa.float64()),
                pa.field(CODE, pa.int32()),
            ]
        )
        self._sink = pa.OSFile(str(folder / rows_name), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)
        self._schema = schema

    def add(self, batch: pa.RecordBatch, raw: np.ndarray) -> None:
        """Append tile rows (ROW_COLUMNS) and their stored vectors [B, dim] (store dtype)."""
        stop = self.written + len(raw)
        if stop > self.n:
            raise StoreError("the store holds more tiles than its slides rows count: run `mvh verify`")
        slide_ids = batch.column("slide_id").to_pylist()
        codes = pa.array([self._code[s] for s in slide_ids], pa.int32())
        columns = [batch.column(name).cast(self._schema.field(name).type) for name in ROW_COLUMNS]
        self._writer.write_batch(pa.RecordBatch.from_arrays([*columns, codes], schema=self._schema))
        data = memoryview(np.ascontiguousarray(raw, dtype=self._dtype)).cast("B")
        at = self._offset + self.written * self._row_bytes
        while len(data):  # pwrite may write less than asked; the blocks are reserved, so it goes on
            done = os.pwrite(self._file.fileno(), data, at)
            data, at = data[done:], at + done
        self.written = stop

    def close(self) -> dict[str, Any]:
        """Finish the files; the part's entry for `index.json`."""
        self._writer.close()
        self._sink.close()
        self._file.close()
        if self.written != self.n:
            raise StoreDamagedError(
                f"{self.n} tiles expected but {self.written} read for slides {self.slides[:3]}: the store "
                "changed during the build, or is damaged; run `mvh verify`, then `mvh index build` again"
            )
        return {"id": self.part_id, "n": self.n, "slides": self.slides}


class VectorFile:
    """The [n, dim] rows of a part's .npy, read by row id with `os.preadv`: a re-rank reads scattered
    rows of 1.5 KB, and nothing stays mapped in the process. (A memory map left every page it had
    touched in the RSS: an overlap at 10M tiles reached 13.7 GB of RSS, 10.4 GB of it mapped parts.)
    Reads are positional, so threads may share one `VectorFile`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, self.dtype = read_header(fh)
            self.offset = fh.tell()
            size = os.fstat(fh.fileno()).st_size
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: not a C-ordered [n, dim] array")
        self.n, self.dim = int(shape[0]), int(shape[1])
        self.row_bytes = self.dim * self.dtype.itemsize
        if size < self.offset + self.n * self.row_bytes:
            raise ValueError(f"{path}: {size} bytes, shorter than its header says (a truncated file)")
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)  # closed with the index that holds it

    def __len__(self) -> int:
        return self.n

    def rows(self, local: np.ndarray) -> np.ndarray:
        """Rows `local` [k] (any order, repeats allowed) as stored, [k, dim]: one read per run of
        consecutive rows; many runs are read by `READ_THREADS` threads at once (cold scattered reads
        wait on the disk, not the CPU: 12,800 rows took 0.8-0.9 s in one thread, 0.26-0.3 s in 8)."""
        wanted, back = np.unique(np.asarray(local, dtype=np.int64), return_inverse=True)
        out = np.empty((len(wanted), self.dim), self.dtype)
        if not len(wanted):
            return out
        if wanted[0] < 0 or wanted[-1] >= self.n:
            raise IndexError(f"{self.path}: rows {wanted[0]}..{wanted[-1]} outside 0..{self.n - 1}")
        cuts = np.flatnonzero(np.diff(wanted) != 1) + 1
        starts = np.concatenate([[0], cuts])
        stops = np.concatenate([cuts, [len(wanted)]])
        view = memoryview(out.reshape(-1).view(np.uint8))

        def read(runs: np.ndarray) -> None:
            size = self.row_bytes
            for begin, end in zip(starts[runs].tolist(), stops[runs].tolist(), strict=True):
                first = int(wanted[begin])
                got = os.preadv(self._fd, [view[begin * size : end * size]], self.offset + first * size)
                if got != (end - begin) * size:
                    raise StoreError(f"{self.path}: short read at row {first}: run `mvh index build`")

        runs = np.arange(len(starts))
        if len(runs) < THREADED_READ_RUNS:
            read(runs)
        else:
            with ThreadPoolExecutor(READ_THREADS) as pool:
                list(pool.map(read, np.array_split(runs, READ_THREADS)))  # list(): re-raise errors
        return out[back.reshape(-1)]


@dataclass
class _Part:
    rows: pa.Table
    vectors: VectorFile
    slides: list[str]


@dataclass
class PartSet:
    """The parts of one build, opened for reads by row id; global row id = offset of its part + row in it."""

    folder: Path
    entries: list[dict[str, Any]]
    _parts: list[_Part] = field(default_factory=list)

    def __post_init__(self) -> None:
        for entry in self.entries:
            rows_name, vec_name = part_files(entry["id"])
            try:
                rows = pa.ipc.open_file(pa.memory_map(str(self.folder / rows_name))).read_all()
                vectors = VectorFile(self.folder / vec_name)
            except (OSError, ValueError, pa.ArrowInvalid) as exc:
                raise StoreError(
                    f"index part {entry['id']} in {self.folder} is unreadable ({exc}): run `mvh index build`"
                ) from exc
            if rows.num_rows != entry["n"] or len(vectors) != entry["n"]:
                raise StoreError(
                    f"index part {entry['id']} in {self.folder} is incomplete: run `mvh index build`"
                )
            self._parts.append(_Part(rows, vectors, list(entry["slides"])))
        self.offsets = np.cumsum([0, *[int(e["n"]) for e in self.entries]])

    @property
    def n(self) -> int:
        """Number of rows over all parts."""
        return int(self.offsets[-1])

    def _split(self, ids: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(part, positions in `ids`, local row ids) for each part that `ids` touch."""
        ids = np.asarray(ids, dtype=np.int64)
        which = np.searchsorted(self.offsets, ids, side="right") - 1
        return [(p, np.flatnonzero(which == p), ids[which == p] - self.offsets[p]) for p in np.unique(which)]

    def take(self, ids: np.ndarray) -> pd.DataFrame:
        """Tile rows of row ids `ids`, in that order."""
        frames: list[pd.DataFrame] = []
        order = []
        for p, where, local in self._split(ids):
            hits = self._parts[p].rows.select(list(ROW_COLUMNS)).take(pa.array(local))
            frames.append(hits.to_pandas())  # only the rows asked for (a search's hits)
            order.append(where)
        if not frames:
            return pd.DataFrame({c: [] for c in ROW_COLUMNS})
        frame = pd.concat(frames, ignore_index=True)
        return frame.iloc[np.argsort(np.concatenate(order), kind="stable")].reset_index(drop=True)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of `ids` as float32 (each part read in row order)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self._parts[0].vectors.dim if self._parts else 0), np.float32)
        for p, where, local in self._split(ids):
            out[where] = self._parts[p].vectors.rows(local)
        return out

    def slide_mask(self, slide_ids: Sequence[str]) -> np.ndarray:
        """Bool [n]: rows of the given slides (by each part's slide codes, no string comparisons)."""
        wanted = set(map(str, slide_ids))
        masks = []
        for part in self._parts:
            codes = [i for i, s in enumerate(part.slides) if s in wanted]
            column = part.rows.column(CODE).to_numpy()
            masks.append(np.isin(column, codes))
        return np.concatenate(masks) if masks else np.zeros(0, bool)

    def tile_rows(self, tile_ids: Sequence[str]) -> np.ndarray:
        """Row ids of `tile_ids` (-1 when not held): one pass over each part's tile_id column."""
        wanted = pa.array([str(t) for t in tile_ids], pa.string())
        out = np.full(len(wanted), -1, dtype=np.int64)
        for p, part in enumerate(self._parts):
            position = pc.index_in(part.rows.column("tile_id"), value_set=wanted)
            local = np.flatnonzero(position.is_valid().to_numpy(zero_copy_only=False))
            found = position.take(pa.array(local)).to_numpy(zero_copy_only=False).astype(np.int64)
            out[found] = local + self.offsets[p]
        return out

    def find(self, slide_id: str, x: int, y: int) -> int:
        """Row id of the tile at (x, y) of `slide_id` (-1 when none)."""
        for p, part in enumerate(self._parts):
            if slide_id not in part.slides:
                continue
            code = part.slides.index(slide_id)
            rows = part.rows
            hit = np.flatnonzero(
                (rows.column(CODE).to_numpy() == code)
                & (rows.column("x").to_numpy() == x)
                & (rows.column("y").to_numpy() == y)
            )
            if len(hit):
                return int(hit[0] + self.offsets[p])
        return -1
