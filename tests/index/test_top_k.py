"""Blockwise exact top-k: the Flat index's CPU search and the store scan's merge."""

from __future__ import annotations

import numpy as np
import pytest

from mvh.index import top_k
from mvh.index.top_k import TopK, flat_top_k


def _reference(base: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple:
    """Written out independently: every score, then a full sort by (-score, row id)."""
    sims = (q.astype(np.float64) @ base.astype(np.float64).T).astype(np.float32)
    ids_out, scores_out = [], []
    for row in sims:
        order = sorted(
            (i for i in range(len(base)) if allowed is None or allowed[i]), key=lambda i: (-row[i], i)
        )[:k]
        ids_out.append(order + [-1] * (k - len(order)))
        scores_out.append([row[i] for i in order] + [-np.inf] * (k - len(order)))
    return np.array(scores_out, np.float32), np.array(ids_out)


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(top_k, "FLAT_BLOCK_ROWS", 16)  # many blocks from a small matrix
    monkeypatch.setattr(top_k, "QUERY_CHUNK", 32)  # and several chunks of queries


def test_flat_top_k_is_exact_with_ties_to_the_lower_row_and_a_mask(small_blocks) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(-2, 3, (70, 8)).astype(np.float32)  # small integers: exact products, many ties
    q = rng.integers(-2, 3, (9, 8)).astype(np.float32)
    allowed = rng.random(70) > 0.3
    for k, mask in ((5, None), (12, allowed), (80, allowed)):  # k > allowed rows: -1 padding
        scores, ids = flat_top_k(base, q, k, mask)
        want_scores, want_ids = _reference(base, q, k, mask)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)


def test_flat_top_k_of_stacked_queries_equals_each_query_alone_bit_for_bit(small_blocks) -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((100, 768)).astype(np.float32)
    q = rng.standard_normal((70, 768)).astype(np.float32)  # 3 chunks; a query sits at every group position
    stacked = flat_top_k(base, q, 7)
    for i in range(len(q)):
        alone = flat_top_k(base, q[i : i + 1], 7)
        np.testing.assert_array_equal(alone[0][0], stacked[0][i])
        np.testing.assert_array_equal(alone[1][0], stacked[1][i])
    # and every score is the inner product (BLAS rounding aside)
    np.testing.assert_allclose(stacked[0], np.take_along_axis(q @ base.T, stacked[1], axis=1), rtol=1e-5)


def test_top_k_merges_blocks_in_any_order() -> None:
    rng = np.random.default_rng(2)
    sims = rng.integers(0, 5, (4, 30)).astype(np.float32)
    forward, backward = TopK(4, 6), TopK(4, 6)
    for start in range(0, 30, 7):
        forward.add(sims[:, start : start + 7], np.arange(start, min(start + 7, 30)))
    for start in reversed(range(0, 30, 7)):
        backward.add(sims[:, start : start + 7], np.arange(start, min(start + 7, 30)))
    want = np.array([sorted(range(30), key=lambda i, r=r: (-r[i], i))[:6] for r in sims])
    np.testing.assert_array_equal(forward.result()[1], want)
    np.testing.assert_array_equal(backward.result()[1], want)
