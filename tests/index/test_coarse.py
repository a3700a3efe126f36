"""The IVF coarse quantiser: two-level k-means centroids, and FAISS keeping them when it trains the PQ."""

from __future__ import annotations

import faiss
import numpy as np

from mvh.core.synthetic_embeddings import clustered_embeddings
from mvh.index.coarse import coarse_centroids, proportional_counts
from mvh.index.faiss_index import empty_index, train_index
from mvh.index.params import COARSE_EF_SEARCH, auto_params


def test_proportional_counts_by_largest_remainder() -> None:
    # 10 split over 5:3:2 is exact; 7 over 1:1:1 gives 2.33 each, the first two remainders win the last 1
    assert proportional_counts(np.array([5, 3, 2]), 10).tolist() == [5, 3, 2]
    assert proportional_counts(np.array([1, 1, 1]), 7).tolist() == [3, 2, 2]
    assert proportional_counts(np.array([9, 0, 1]), 3).tolist() == [3, 0, 0]
    counts = np.random.default_rng(0).integers(0, 50, 40)
    for size in (0, 1, 17, 500):
        share = proportional_counts(counts, size)
        assert share.sum() == size and (np.abs(share - size * counts / counts.sum()) < 1).all()


def _sample(n: int = 6000, dim: int = 32) -> np.ndarray:
    return clustered_embeddings(n, dim, n_clusters=24, seed=3)[0]


def test_two_level_centroids_are_unit_seeded_and_fit_the_data() -> None:
    sample = _sample()
    unit = sample / np.linalg.norm(sample, axis=1, keepdims=True)
    centroids = coarse_centroids(sample, 64, seed=5)
    assert centroids.shape == (64, 32) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(centroids, coarse_centroids(sample, 64, seed=5))
    # a quantiser worth its cells: every point is much closer to its nearest centroid than to a random one
    nearest = (unit @ centroids.T).max(axis=1)
    random_pick = (unit * centroids[np.random.default_rng(0).integers(0, 64, len(unit))]).sum(axis=1)
    assert nearest.mean() > random_pick.mean() + 0.2
    # more cells than level-1 centres exist in the result, and no two centroids coincide
    assert len(np.unique(centroids.round(5), axis=0)) == 64


def test_trained_ivf_keeps_the_two_level_centroids_and_finds_cells_through_hnsw() -> None:
    sample = _sample()
    params = auto_params(300_000, 32, "ivfpq", nlist=64, m=8)
    index = empty_index(params, 32)
    train_index(index, sample, params, seed=0)
    ivf = faiss.extract_index_ivf(index)
    quantizer = faiss.downcast_index(ivf.quantizer)
    assert isinstance(quantizer, faiss.IndexHNSWFlat) and quantizer.hnsw.efSearch == COARSE_EF_SEARCH
    kept = quantizer.storage.reconstruct_n(0, 64)
    np.testing.assert_array_equal(kept, coarse_centroids(sample, 64, seed=0))
    assert index.is_trained
    # the graph gives each vector the cell an exact comparison with every centroid gives (nearly always)
    unit = sample / np.linalg.norm(sample, axis=1, keepdims=True)
    _, through_graph = quantizer.search(unit, 1)
    assert (through_graph[:, 0] == (unit @ kept.T).argmax(axis=1)).mean() > 0.99
