"""The coarse quantiser of an IVF index: its `nlist` centroids, trained by two-level spherical k-means.

One k-means of `nlist` centres on 64 x nlist points costs nlist^2 (at nlist 4,096 on 262,144 unit
768-d vectors: 700 s of CPU on this 2-core machine, the 10M build's largest step). Two levels cost
about nlist^1.5: k-means of sqrt(nlist) centres on the sample, then each of those cells split by its
own k-means into a share of the nlist centres in proportion to the points it holds (the hierarchical
k-means of Nister & Stewenius, CVPR 2006, as FAISS's wiki advises for indexes of millions of cells).
Every k-means is spherical (unit centroids) and seeded, so a build is reproducible.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from mvh.core.vectors import l2_normalise

NITER = 10  # k-means iterations per level (FAISS's own for IVF quantisers)


def proportional_counts(counts: np.ndarray, size: int) -> np.ndarray:
    """`size` split in proportion to `counts` by largest remainders (ties: the earlier entry)."""
    counts = np.asarray(counts, dtype=np.int64)
    exact = size * counts / max(int(counts.sum()), 1)
    share = np.floor(exact).astype(np.int64)
    fractions = exact - share
    # sum(fractions) is what is left over and each is < 1, so only entries with a fraction get one more
    share[np.argsort(-fractions, kind="stable")[: size - int(share.sum())]] += 1
    return share


def _kmeans(unit: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k unit centroids [k, dim] of the unit rows `unit` (spherical k-means, seeded)."""
    if k == 1:
        return l2_normalise(unit.mean(axis=0, keepdims=True))
    kmeans = faiss.Kmeans(unit.shape[1], k, niter=NITER, seed=seed, spherical=True, verbose=False)
    kmeans.train(unit)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def coarse_centroids(sample: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """`nlist` unit centroids [nlist, dim] of the `sample` [n, dim] (n >= nlist), by two-level k-means.

    Level 1: round(sqrt(nlist)) centres on the sample. Level 2: cell c, holding n_c sample points, gets
    `proportional_counts` of the nlist centres (n_c * nlist / n, so about 64 points a centre for a
    sample of 64 x nlist) and a k-means of its own points; a cell too small for a share gives none.
    """
    unit = l2_normalise(sample)
    if len(unit) < nlist:
        raise ValueError(f"{len(unit)} sample vectors cannot train {nlist} centroids")
    top = max(1, min(nlist, round(math.sqrt(nlist))))
    first = _kmeans(unit, top, seed)
    cell = _nearest(first, unit)
    shares = proportional_counts(np.bincount(cell, minlength=top), nlist)
    parts = [
        _kmeans(unit[cell == c], int(share), seed + 1 + c) for c, share in enumerate(shares) if share > 0
    ]
    return np.concatenate(parts)


def _nearest(centroids: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Position of each row's nearest centroid (highest cosine)."""
    flat = faiss.IndexFlatIP(centroids.shape[1])
    flat.add(centroids)
    return flat.search(unit, 1)[1][:, 0]
