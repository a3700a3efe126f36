"""Merging fast-scan IVF shards (the Ray build's step) equals adding every vector to one index.

FAISS 1.15's `BlockInvertedLists::add_entries` overruns a list that already holds a multiple of
`block_size` entries; `mvh.index.shards.merge_into` re-packs such lists itself. With one cell every
vector lands in list 0, so shards of 128 vectors (the block size of 8 four-bit sub-quantisers) hit it.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from mvh.index.shards import merge_into


def _lists(index: faiss.Index) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, flat codes) of every list, read back through FAISS's own code packer."""
    ivf = faiss.downcast_index(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    out = []
    for lst in range(ivf.nlist):
        n = lists.list_size(lst)
        ids = faiss.rev_swig_ptr(lists.get_ids(lst), n).copy() if n else np.zeros(0, np.int64)
        codes = np.zeros((n, ivf.code_size), dtype=np.uint8)
        for i in range(n):  # one code at a time, FAISS's packer
            lists.packer.unpack_1_c(lists.get_codes(lst), i, faiss.swig_ptr(codes[i]))
        out.append((ids, codes))
    return out


@pytest.mark.parametrize("spec,shard", [("IVF1,PQ8x4fs", 128), ("IVF1,PQ8x4fs", 100), ("IVF4,PQ8x4fs", 128)])
def test_merged_fast_scan_shards_equal_one_index(spec: str, shard: int) -> None:
    x = np.random.default_rng(0).standard_normal((5 * shard, 16)).astype(np.float32)
    trained = faiss.index_factory(16, spec, faiss.METRIC_INNER_PRODUCT)
    trained.train(x)
    whole = faiss.clone_index(trained)
    whole.add(x)
    merged = faiss.clone_index(trained)
    for start in range(0, len(x), shard):
        part = faiss.clone_index(trained)
        part.add(x[start : start + shard])
        merge_into(merged, part)
    assert merged.ntotal == whole.ntotal == len(x)
    for (ids_m, codes_m), (ids_w, codes_w) in zip(_lists(merged), _lists(whole), strict=True):
        np.testing.assert_array_equal(ids_m, ids_w)
        np.testing.assert_array_equal(codes_m, codes_w)
    queries = x[:20] + 0.01
    np.testing.assert_array_equal(merged.search(queries, 5)[1], whole.search(queries, 5)[1])
