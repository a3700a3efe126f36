"""The one L2 normalisation of the package: indexes, search, retrieval, kNN and pretraining evidence all
call it, so a cosine score means the same everywhere."""

from __future__ import annotations

import numpy as np

from mvh.errors import UsageError


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of `x` [N, D] scaled to unit L2 norm, as contiguous float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise UsageError(f"embeddings must be a 2-d array [N, dim], got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no [N, D] temporary
    if np.all(np.abs(norms - 1) < 1e-6):
        return x  # already unit rows: no 3 GB copy for a million 768-d embeddings
    return np.ascontiguousarray(x / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)
