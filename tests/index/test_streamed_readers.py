"""The streamed readers of evaluations: the selected tiles equal the store's own per-slide reads, and a
selection above the memory-map threshold lands in a memory-mapped file with the same values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mvh.tasks.stores as stores
from mvh.tasks.stores import SEP, read_slides, select_tiles, slide_tile_key, tile_key
from tests.index.test_faiss_indexes import DIM, add_slide, make_store


@pytest.mark.parametrize("memmap", [False, True])
def test_selected_tiles_equal_per_slide_reads(tmp_path: Path, monkeypatch, memmap: bool) -> None:
    if memmap:
        monkeypatch.setattr(stores, "MEMMAP_BYTES", 0)
        monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(2)
    store = make_store(tmp_path)
    for s in ("a", "b", "c"):
        add_slide(store, s, rng.standard_normal((25, DIM)).astype(np.float32))
    truth = {s: (store.slide_tiles(s)["tile_id"].tolist(), store.slide_embeddings(s)[0]) for s in "abc"}
    wanted = [truth["b"][0][3], truth["a"][0][0], "nowhere:0:0:448", truth["c"][0][24]]
    rows, emb, found = select_tiles(store, wanted, tile_key)
    assert found.tolist() == [True, True, False, True] and isinstance(emb, np.memmap) == memmap
    np.testing.assert_array_equal(emb[0], truth["b"][1][3])
    np.testing.assert_array_equal(emb[3], truth["c"][1][24])
    assert rows["slide_id"].tolist() == ["b", "a", None, "c"] and not emb[2].any()
    pair = truth["a"][0][1]
    _, _, found = select_tiles(store, ["a" + SEP + pair, "b" + SEP + pair], slide_tile_key)
    assert found.tolist() == [True, False]
    rows, emb = read_slides(store, ["c", "a"], ("slide_id", "tile_id"))
    assert sorted(rows["tile_id"]) == sorted(truth["a"][0] + truth["c"][0])
    by_tile = dict(zip(rows["tile_id"], emb, strict=True))
    np.testing.assert_array_equal(np.stack([by_tile[t] for t in truth["a"][0]]), truth["a"][1])


def _mapped_rss_kb(path: str) -> int:
    """Resident kB of this process's mappings of `path` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header line
            inside = path in line
        elif inside and first == "Rss:":
            total += int(line.split()[1])
    return total


def test_mapped_pages_leave_the_resident_set_and_keep_their_values(tmp_path: Path, monkeypatch) -> None:
    """A memory-mapped selection written through holds its pages in RSS until `MappedPages` passes its
    limit; then they are dropped, and every value reads back unchanged (from the file)."""
    monkeypatch.setattr(stores, "MEMMAP_BYTES", 0)
    monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path / "cache"))
    array = stores.allocate(4096, 1024, np.float32)  # 16 MiB
    assert isinstance(array, np.memmap)
    pages = stores.MappedPages(array, limit=8 << 20)
    values = np.random.default_rng(0).standard_normal(array.shape).astype(np.float32)
    array[:2048] = values[:2048]
    pages.touched(array[:2048].nbytes)  # 8 MiB: at the limit, kept
    assert _mapped_rss_kb(array.filename) >= 8 * 1024
    array[2048:] = values[2048:]
    pages.touched(array[2048:].nbytes)  # past the limit: dropped
    assert _mapped_rss_kb(array.filename) < 1024
    np.testing.assert_array_equal(array, values)
    in_ram = stores.allocate(4, 4)
    stores.MappedPages(in_ram, limit=0).touched(10)  # arrays in RAM: nothing to drop
