"""Every read of a store's slides and tiles, each through the store's one `Visibility` rule.

Reads that hand embeddings on check that every value is finite and that each slide has the tiles its row
counts (`StoreDamagedError` otherwise); a concurrent `--overwrite` that swaps a slide's tiles mid-read is
answered by reading again. `mvh.store.integrity.verify_store` re-computes the checksums.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mvh.errors import StoreDamagedError, StoreError
from mvh.store.checksums import StreamedSums, check_whole_slides
from mvh.store.location import StoreLocation
from mvh.store.remote_errors import remote_failure
from mvh.store.schema import DONE, OLD_SLIDE_ATTRS, SLIDE_ATTRS, embeddings_to_numpy
from mvh.store.slide_rows import SlideRows
from mvh.store.tables import StoreTables, is_damage, quote, reason
from mvh.store.visibility import Visibility

READ_RETRIES = 5
_TILE_KEYS = ("slide_id", "x", "y", "tile_id")


def in_order(table: pa.Table) -> pa.Table:
    """Tile rows ordered by (slide_id, y, x, tile_id), ties in the order given."""
    keys = [(name, "ascending") for name in ("slide_id", "y", "x", "tile_id")]
    return table.take(pc.sort_indices(table, sort_keys=keys))


class StoreReader:
    """Reads of one opened store: slide rows, a slide's tiles, cohort scans, tiles by id."""

    def __init__(self, tables: StoreTables, location: StoreLocation, dim: int, rule: Visibility) -> None:
        self.tables = tables
        self.location = location
        self.uri = location.uri
        self.dim = dim
        self.rule = rule
        self.frozen_rows: pd.DataFrame | None = None  # slides rows of a frozen handle, read once
        self.row_map: SlideRows | None = None  # where each slide's tiles sit (frozen handles)

    # ---------------------------------------------------------------- slide rows
    def slide_rows(self, where: str | None = None) -> pd.DataFrame:
        """Slides rows, one per slide (the latest when racing writers left two), sorted by slide_id.

        A frozen handle reads one version, so it reads the table once (each query is several object-store
        requests) and answers from that copy.
        """
        if self.rule.frozen:
            if self.frozen_rows is None:
                self.frozen_rows = self._query_slide_rows(None)
            if where is None:
                return self.frozen_rows.copy()
        return self._query_slide_rows(where)

    def _query_slide_rows(self, where: str | None) -> pd.DataFrame:
        try:  # search() itself asks for the latest version: on an object store, a request
            query = self.tables.slides.search()
            if where is not None:
                query = query.where(where)
            frame = query.to_arrow().to_pandas()  # the slides table: one row per slide, no embeddings
        except Exception as exc:  # noqa: BLE001 (is_damage lets through all but damage)
            if not is_damage(exc):
                raise
            raise remote_failure(exc, self.location) or StoreDamagedError(
                f"store {self.uri} is damaged: its slides table cannot be read ({reason(exc)}); restore it "
                "from a copy"
            ) from exc
        frame = frame.rename(columns={OLD_SLIDE_ATTRS: SLIDE_ATTRS})  # a store written before 0.2
        if self.rule.legacy:
            for name in ("commit", "checksum", SLIDE_ATTRS, "file_hash"):
                if name not in frame.columns:
                    frame[name] = None
        frame = frame.sort_values(["slide_id", "timestamp"], kind="stable")
        frame = frame.drop_duplicates("slide_id", keep="last")
        return frame.reset_index(drop=True)

    def slide_row(self, slide_id: str) -> dict[str, Any] | None:
        """A slide's row (any status), None when the store has none."""
        if self.rule.frozen:
            rows = self.slide_rows()
            rows = rows[rows["slide_id"] == slide_id]
        else:
            rows = self.slide_rows(f"slide_id = {quote(slide_id)}")
        return rows.iloc[0].to_dict() if len(rows) else None

    def done_row(self, slide_id: str) -> dict[str, Any]:
        """A done slide's row (StoreError when it is absent or failed)."""
        row = self.slide_row(slide_id)
        if row is None or row["status"] != DONE:
            state = "absent" if row is None else row["status"]
            raise StoreError(f"slide {slide_id} is {state} in store {self.uri}: list slides with `mvh info`")
        return row

    def slides(self, status: str | None = None) -> pd.DataFrame:
        """One row per slide (sorted by slide_id), optionally only those with `status`."""
        frame = self.slide_rows()
        if status is not None:
            frame = frame[frame["status"] == status].reset_index(drop=True)
        return frame

    def slide_attrs(self, slide_id: str) -> dict[str, Any]:
        """A slide's extra attributes (the `slide_attrs` JSON object given at commit; {} when none)."""
        row = self.slide_row(slide_id)
        if row is None:
            raise StoreError(f"slide {slide_id} is absent in store {self.uri}: list slides with `mvh info`")
        text = row.get(SLIDE_ATTRS)
        return {} if text is None or (isinstance(text, float) and math.isnan(text)) else json.loads(text)

    # ---------------------------------------------------------------- one slide's tiles
    def unreadable_tiles(self, exc: BaseException) -> StoreError:
        """The error for a tiles table that cannot be read (an object store's silence is not damage)."""
        return remote_failure(exc, self.location) or StoreDamagedError(
            f"store {self.uri} is damaged: its tiles cannot be read ({reason(exc)}); run "
            f"`mvh verify --store {self.uri}` and restore the store from a copy"
        )

    def read_tiles(self, where: str | None, columns: Sequence[str]) -> pa.Table:
        """Tile rows matching `where` (all rows when None) with `columns` and the keys, in tile order."""
        wanted = list(dict.fromkeys([*columns, *_TILE_KEYS, *self.rule.read_columns()]))
        try:
            query = self.tables.tiles.search()
            if where is not None:
                query = query.where(where)
            table = query.select(wanted).to_arrow()  # callers pass one slide's filter (or a small store)
        except Exception as exc:  # noqa: BLE001 (is_damage lets through all but damage)
            if not is_damage(exc):
                raise
            raise self.unreadable_tiles(exc) from exc
        return in_order(table)

    def filtered_slide(self, row: dict[str, Any], columns: Sequence[str]) -> pa.Table:
        """A done slide's visible tile rows found by a filter (how a writable handle reads)."""
        return self.read_tiles(self.rule.slide_filter(row), columns)

    def taken_slide(self, row: dict[str, Any], columns: Sequence[str]) -> pa.Table:
        """A done slide's visible tile rows read by row id: the same rows and columns as `filtered_slide`.

        Only for frozen handles: the map of row ids is scanned once per version (see slide_rows). A writable
        handle follows the latest version, which may be compacted between the map and the take (row ids
        move), so it reads through the filter.
        """
        tiles = self.tables.tiles
        keys, values = self.rule.keys, self.rule.key_values(row)
        fetch = list(dict.fromkeys(c for c in [*columns, "x", "y", "tile_id"] if c not in keys))
        try:
            if self.row_map is None or self.row_map.version != tiles.version:
                self.row_map = SlideRows.scan(tiles, with_commit=not self.rule.legacy)
            ids = self.row_map.row_ids(str(row["slide_id"]), self.rule.commit_of(row))
            if len(ids):
                table = tiles.take_row_ids(ids.tolist()).select(fetch).to_arrow()  # one slide's rows
            else:
                table = tiles.schema.empty_table().select(fetch)
        except Exception as exc:  # noqa: BLE001 (is_damage lets through all but damage)
            if not is_damage(exc):
                raise
            raise self.unreadable_tiles(exc) from exc
        for name, value in zip(keys, values, strict=True):
            field = tiles.schema.field(name)  # the map matched these values on every row it holds
            table = table.append_column(field, pa.array([value] * table.num_rows, field.type))
        wanted = list(dict.fromkeys([*columns, *_TILE_KEYS, *keys]))
        return in_order(table.select(wanted))

    def raw_slide_tiles(
        self, slide_id: str, columns: Sequence[str] = ("embedding",)
    ) -> tuple[dict[str, Any], pa.Table]:
        """A done slide's row and its visible tile rows as stored, UNCHECKED (for integrity checks)."""
        row = self.done_row(slide_id)
        if self.rule.frozen:
            return row, self.taken_slide(row, columns)
        return row, self.filtered_slide(row, columns)

    def slide_table(self, slide_id: str, columns: Sequence[str]) -> pa.Table:
        """A done slide's visible tiles, re-read if a concurrent overwrite swapped them mid-read."""
        for _ in range(READ_RETRIES):
            row, table = self.raw_slide_tiles(slide_id, columns)
            if table.num_rows == int(row["n_tiles"]):
                return table
        raise self.mismatch([slide_id])

    def finite(self, emb: np.ndarray, slide_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """`emb`, or StoreDamagedError naming the slides holding NaN/inf (bit rot, a damaged data file)."""
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            names = sorted(set(np.asarray(slide_ids.to_pylist(), dtype=object)[bad]))
            raise StoreDamagedError(
                f"store {self.uri}: non-finite embedding values in slide(s) {names[:5]} (a damaged data "
                f"file); run `mvh verify --store {self.uri}`, then re-extract them with --overwrite"
            )
        return emb

    def split(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings [N, dim] float32 checked finite, level-0 coords [N, 2] int64) of tile rows."""
        emb = self.finite(embeddings_to_numpy(table.column("embedding"), self.dim), table.column("slide_id"))
        coords = np.stack([table.column("x").to_numpy(), table.column("y").to_numpy()], axis=1)
        return emb, coords.astype(np.int64, copy=False)

    def slide_tiles(self, slide_id: str) -> pd.DataFrame:
        """A done slide's tile rows (no embeddings), ordered by (y, x)."""
        columns = [n for n in self.tables.tiles.schema.names if n not in ("embedding", "commit")]
        return self.slide_table(slide_id, columns).select(columns).to_pandas()  # one slide

    def slide_embeddings(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A done slide's embeddings [N, dim] float32 and level-0 coords [N, 2] int64 (x, y), by (y, x)."""
        table = self.slide_table(slide_id, ["embedding"])
        emb, coords = self.split(table)  # NaN/inf first: the more telling message
        check_whole_slides(table, self.slides(DONE), self.uri)
        return emb, coords

    # ---------------------------------------------------------------- many slides
    def counts_match(self, table: pa.Table, done: pd.DataFrame) -> bool:
        """True when `table` holds exactly n_tiles rows of each done slide (no concurrent swap in between)."""
        got = pd.Series(table.column("slide_id").to_pylist(), dtype=object).value_counts()
        want = done.set_index("slide_id")["n_tiles"]
        return bool(got.reindex(want.index, fill_value=0).astype(int).equals(want.astype(int)))

    def mismatch(self, slide_ids: Sequence[str]) -> StoreDamagedError:
        """The error for slides whose visible tiles differ from their rows' counts."""
        return StoreDamagedError(
            f"store {self.uri}: slides {list(slide_ids)[:5]} do not hold the tiles their rows count; run "
            f"`mvh verify --store {self.uri}`, then re-extract them with --overwrite"
        )

    def scan_tiles(
        self, slide_ids: Sequence[str], columns: Sequence[str], batch_rows: int = 65536
    ) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        """Stream the visible tile rows of done `slide_ids` in one scan: (slide index int64 [B], rows).

        The slide index says which of `slide_ids` each row belongs to. Only visible rows are yielded; rows
        come in storage order, and counts and values are the caller's to check (`all_embeddings` does
        both). For cohort readers that fill preallocated arrays without the copies `all_embeddings` makes.
        """
        order = [str(s) for s in slide_ids]
        rows = self.slides(status=DONE).set_index("slide_id")
        absent = [s for s in order if s not in rows.index]
        if absent:
            raise StoreError(f"slide(s) {absent[:5]} are not done in store {self.uri}: extract them first")
        key = self.rule.key
        value_set = self.rule.done_keys(rows.loc[order].reset_index())
        query = self.tables.tiles.search().select(list(dict.fromkeys(["slide_id", key, *columns])))
        if order and 2 * len(order) < len(rows):  # a small part of the store: let Lance filter
            query = query.where(f"slide_id IN ({', '.join(quote(s) for s in order)})")
        whole = {"tile_id", "embedding"} <= set(columns)  # the caller reads every vector: check them
        sums = StreamedSums(order, rows.loc[order].reset_index(), self.uri) if whole else None
        for batch in query.to_batches(batch_rows) if order else []:
            index = pc.fill_null(pc.index_in(batch.column(key), value_set=value_set), -1)
            index = index.to_numpy(zero_copy_only=False).astype(np.int64)
            keep = np.flatnonzero(index >= 0)
            if len(keep):
                kept = batch if len(keep) == batch.num_rows else batch.take(pa.array(keep))
                if sums is not None:
                    sums.add(index[keep], kept)
                yield index[keep], kept

    def all_embeddings(
        self, columns: Sequence[str], slide_ids: Sequence[str] | None = None
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Rows (chosen columns) and embeddings [N, dim] float32 of done tiles by (slide_id, y, x), one scan.

        `slide_ids` restricts the read to those done slides (StoreError naming any that is not done).
        """
        where = None
        if slide_ids is not None:
            wanted = list(dict.fromkeys(str(s) for s in slide_ids))
            where = f"slide_id IN ({', '.join(map(quote, wanted))})" if wanted else "false"
        for _ in range(READ_RETRIES):
            done = self.slides(DONE)
            if slide_ids is not None:
                missing = sorted(set(wanted) - set(done["slide_id"]))
                if missing:
                    raise StoreError(
                        f"slides {missing[:5]} are not done in store {self.uri}: list slides with `mvh info`"
                    )
                done = done[done["slide_id"].isin(wanted)]
            table = self.rule.keep(self.read_tiles(where, [*columns, "embedding"]), done)
            if self.counts_match(table, done):
                break
        else:
            raise self.mismatch(list(done["slide_id"]))
        emb = self.finite(embeddings_to_numpy(table.column("embedding"), self.dim), table.column("slide_id"))
        check_whole_slides(table, done, self.uri)
        return table.select(list(columns)).to_pandas(), emb

    def rows_by_tile_ids(self, tile_ids: Sequence[str], with_embeddings: bool = False) -> pd.DataFrame:
        """Tile rows of done slides in the order of `tile_ids` (StoreError naming any missing id)."""
        tiles = self.tables.tiles
        columns = [n for n in tiles.schema.names if (with_embeddings or n != "embedding") and n != "commit"]
        fetch = list(dict.fromkeys([*columns, *self.rule.read_columns()]))
        wanted = list(dict.fromkeys(str(t) for t in tile_ids))
        parts = []
        for start in range(0, len(wanted), 1000):
            chunk = ", ".join(quote(t) for t in wanted[start : start + 1000])
            parts.append(tiles.search().where(f"tile_id IN ({chunk})").select(fetch).to_arrow())
        found = pa.concat_tables(parts) if parts else tiles.schema.empty_table().select(fetch)
        table = self.rule.keep(found, self.slides(DONE))
        position = pc.index_in(
            pa.array([str(t) for t in tile_ids], pa.string()), value_set=table.column("tile_id")
        )
        if position.null_count:
            missing = [t for t, p in zip(tile_ids, position.to_pylist(), strict=True) if p is None][:5]
            raise StoreError(
                f"tile ids {missing} are not in store {self.uri}: rebuild the index with `mvh index build`"
            )
        table = table.take(position)
        frame = table.select([c for c in columns if c != "embedding"]).to_pandas()
        if with_embeddings:
            emb = self.finite(
                embeddings_to_numpy(table.column("embedding"), self.dim), table.column("slide_id")
            )
            frame["embedding"] = list(emb)
        return frame

    def orphan_tile_count(self) -> int:
        """Tile rows no slide row names (interrupted or lost concurrent commits): invisible, harmless."""
        if self.rule.legacy:
            return 0
        try:
            commits = self.tables.tiles.search().select(["commit"]).to_arrow().column("commit")
        except Exception as exc:  # noqa: BLE001 (is_damage lets through all but damage)
            if not is_damage(exc):
                raise
            raise self.unreadable_tiles(exc) from exc
        named = pa.array([c for c in self.slides(DONE)["commit"] if c is not None], pa.string())
        if not len(commits):
            return 0
        visible = pc.sum(pc.is_in(commits, value_set=named)).as_py() or 0
        return len(commits) - int(visible)
