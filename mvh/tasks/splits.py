"""Deterministic cross-validation splits over spots, tiles, patients and studies.

Every function returns a list of `Fold` (integer row indices into the caller's arrays) and depends only
on its inputs and `seed`, so every model in a comparison table sees exactly the same folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mvh.errors import DataError, UsageError

SPLITS = ("random", "patient", "loso")


@dataclass(frozen=True)
class Fold:
    """One train/test partition: sorted int64 row indices, and a name such as "fold3" or "study=B"."""

    index: int
    name: str
    train: np.ndarray
    test: np.ndarray


def _check_k(k: int, n: int, what: str) -> None:
    if k < 2:
        raise UsageError(f"--folds {k}: cross-validation needs at least 2 folds; pass --folds 2 or more")
    if n < k:
        raise DataError(f"only {n} {what} for {k} folds; pass --folds {max(n, 2)} or add data")


def _folds_from_assignment(assign: np.ndarray, k: int, names: Sequence[str] | None = None) -> list[Fold]:
    rows = np.arange(len(assign), dtype=np.int64)
    folds = []
    for i in range(k):
        test = rows[assign == i]
        folds.append(Fold(i, names[i] if names else f"fold{i}", rows[assign != i], test))
    return folds


def random_folds(n: int, k: int, seed: int = 0) -> list[Fold]:
    """K-fold over `n` rows after a seeded shuffle; fold sizes differ by at most one."""
    _check_k(k, n, "rows")
    order = np.random.default_rng(seed).permutation(n)
    assign = np.empty(n, dtype=np.int64)
    assign[order] = np.arange(n) % k
    return _folds_from_assignment(assign, k)


def group_folds(groups: Sequence[str] | np.ndarray, k: int, seed: int = 0) -> list[Fold]:
    """K-fold where all rows of a group share a fold; groups are balanced by row count (seeded ties)."""
    groups = np.asarray(groups).astype(str)
    uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    _check_k(k, len(uniq), "groups")
    # Seeded shuffle, then a stable sort by size: largest groups first, ties in the shuffled order.
    order = np.random.default_rng(seed).permutation(len(uniq))
    order = order[np.argsort(-counts[order], kind="stable")]
    fill = np.zeros(k, dtype=np.int64)
    group_fold = np.empty(len(uniq), dtype=np.int64)
    for g in order:
        f = int(np.argmin(fill))
        group_fold[g] = f
        fill[f] += counts[g]
    return _folds_from_assignment(group_fold[inverse], k)


def leave_one_group_out(groups: Sequence[str] | np.ndarray, label: str = "group") -> list[Fold]:
    """One fold per distinct group (sorted by name), that group being the test set."""
    groups = np.asarray(groups).astype(str)
    uniq, inverse = np.unique(groups, return_inverse=True)
    if len(uniq) < 2:
        raise DataError(f"leave-one-{label}-out needs at least 2 distinct {label}s, found {len(uniq)}")
    return _folds_from_assignment(inverse, len(uniq), [f"{label}={g}" for g in uniq])


def stratified_group_folds(
    labels: Sequence | np.ndarray, groups: Sequence[str] | np.ndarray | None, k: int, seed: int = 0
) -> list[Fold]:
    """K-fold for classification: stratified by label, and grouped (a slide never straddles) when given."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    n = len(labels)
    _check_k(k, n, "rows")
    rows = np.arange(n)
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = splitter.split(rows, labels)
    else:
        groups = np.asarray(groups).astype(str)
        _check_k(k, len(np.unique(groups)), "groups")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = splitter.split(rows, labels, groups)
    return [
        Fold(i, f"fold{i}", np.sort(tr).astype(np.int64), np.sort(te).astype(np.int64))
        for i, (tr, te) in enumerate(parts)
    ]


def st_folds(
    split: str,
    *,
    samples: Sequence[str] | np.ndarray,
    patients: Sequence[str] | np.ndarray,
    studies: Sequence[str] | np.ndarray,
    k: int = 10,
    seed: int = 0,
    group_by_sample: bool = False,
) -> list[Fold]:
    """The ST protocol's folds over spots: random (optionally grouped by sample), patient, or loso."""
    if split == "random":
        if group_by_sample:
            return group_folds(samples, k, seed)
        return random_folds(len(samples), k, seed)
    if split == "patient":
        return group_folds(patients, k, seed)
    if split == "loso":
        return leave_one_group_out(studies, label="study")
    raise UsageError(f"--split {split!r} is unknown; use one of {', '.join(SPLITS)}")
