"""Clustered synthetic embeddings for index tests and benchmarks (no model, no store).

Tile embeddings of real backbones are not isotropic: they sit near a few tissue/stain clusters, and
within a cluster they vary along a low-dimensional subspace. The generator mimics that: each point is
`centre_c + B_c z + noise`, with a random unit centre per cluster, a random `dim x intrinsic_dim`
basis `B_c` per cluster (entries ~ N(0, spread^2 / dim)), `z ~ N(0, I)` and isotropic noise of total
norm ~`noise`; rows are L2-normalised. Pure isotropic Gaussian clouds would be the wrong test: in
768 dimensions all their pairwise distances concentrate and nearest neighbours become arbitrary.
"""

from __future__ import annotations

import numpy as np


def clustered_embeddings(
    n: int,
    dim: int = 768,
    n_clusters: int = 100,
    intrinsic_dim: int = 16,
    spread: float = 0.5,
    noise: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return L2-normalised float32 embeddings [n, dim] and their cluster labels int64 [n]."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, n_clusters, size=n)
    out = np.empty((n, dim), dtype=np.float32)
    scale = np.float32(1.0 / np.sqrt(dim))
    for c in range(n_clusters):
        rows = np.flatnonzero(labels == c)
        if rows.size == 0:
            continue
        basis = rng.standard_normal((intrinsic_dim, dim), dtype=np.float32) * (scale * np.float32(spread))
        z = rng.standard_normal((rows.size, intrinsic_dim), dtype=np.float32)
        iso = rng.standard_normal((rows.size, dim), dtype=np.float32) * (scale * np.float32(noise))
        out[rows] = centres[c] + z @ basis + iso
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, labels.astype(np.int64)
