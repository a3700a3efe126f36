"""`mvh overlap` through A's index (candidates, then exact cosines) equals an all-pairs numpy check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mvh.core.synthetic_embeddings import clustered_embeddings
from mvh.index.build import build_index
from mvh.overlap import OverlapConfig, run_overlap
from tests.index.test_faiss_indexes import DIM, add_slide, make_store


@pytest.mark.parametrize("indexed", [True, False])
def test_overlap_via_the_index_equals_all_pairs(tmp_path: Path, indexed: bool) -> None:
    x, _ = clustered_embeddings(1000, dim=DIM, n_clusters=10, seed=5)
    a, b = make_store(tmp_path, "a"), make_store(tmp_path, "b")
    for i in range(4):
        add_slide(a, f"a{i}", x[i * 200 : (i + 1) * 200])
    rng = np.random.default_rng(0)
    near = x[:60] + 0.02 * rng.standard_normal((60, DIM)).astype(np.float32)  # near copies of a0's tiles
    add_slide(b, "b0", np.concatenate([near, x[800:900]]))
    if indexed:
        build_index(a, "ivfpq", nlist=8, m=8)
    result = run_overlap(a, b, OverlapConfig(threshold=0.97))

    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    db, qs = unit(x[:800]), unit(np.concatenate([near, x[800:900]]))
    best = (qs @ db.T).max(axis=1)
    assert result.n_near_duplicate_tiles == int((best >= 0.97).sum())
    assert result.slides_b_with_near_duplicates == {"b0": int((best >= 0.97).sum())}
    top = np.sort(best[best >= 0.97])[::-1][: len(result.closest_pairs)]
    np.testing.assert_allclose([p.cosine for p in result.closest_pairs], top, atol=1e-5)
    assert result.n_tiles_a == 800 and result.n_tiles_b == 160
    assert any("pass over" in n for n in result.notes) == (not indexed)
