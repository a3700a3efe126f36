"""Fold assignment: partitions, grouping by patient/study, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from mvh.errors import DataError, UsageError
from mvh.tasks.splits import (
    group_folds,
    leave_one_group_out,
    random_folds,
    st_folds,
    stratified_group_folds,
)


def _is_partition(folds, n):
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(n))
    for f in folds:
        assert set(f.train.tolist()).isdisjoint(f.test.tolist())
        assert len(f.train) + len(f.test) == n


def test_random_folds_partition_balanced_and_seeded():
    folds = random_folds(103, 10, seed=3)
    _is_partition(folds, 103)
    assert {len(f.test) for f in folds} == {10, 11}
    again = random_folds(103, 10, seed=3)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, again, strict=True))
    other = random_folds(103, 10, seed=4)
    assert not all(np.array_equal(a.test, b.test) for a, b in zip(folds, other, strict=True))


def test_patient_folds_keep_each_patient_in_one_fold():
    rng = np.random.default_rng(0)
    patients = rng.choice([f"p{i}" for i in range(9)], size=300)
    folds = st_folds("patient", samples=patients, patients=patients, studies=patients, k=4, seed=1)
    assert len(folds) == 4
    _is_partition(folds, 300)
    for f in folds:
        assert set(patients[f.test]).isdisjoint(patients[f.train])
    # Balanced by spot count: no fold is empty and the greedy fill keeps them close.
    sizes = [len(f.test) for f in folds]
    assert min(sizes) > 0


def test_loso_holds_out_each_study_exactly_once():
    studies = np.array(["B", "A", "C", "A", "B", "C", "C"])
    folds = st_folds("loso", samples=studies, patients=studies, studies=studies, k=99)
    assert [f.name for f in folds] == ["study=A", "study=B", "study=C"]
    for f, s in zip(folds, "ABC", strict=True):
        assert np.array_equal(f.test, np.flatnonzero(studies == s))
        assert np.array_equal(f.train, np.flatnonzero(studies != s))


def test_random_split_grouped_by_sample():
    samples = np.repeat([f"s{i}" for i in range(6)], 5)
    folds = st_folds("random", samples=samples, patients=samples, studies=samples, k=3, group_by_sample=True)
    for f in folds:
        assert set(samples[f.test]).isdisjoint(samples[f.train])
    assert sorted(len(f.test) for f in folds) == [10, 10, 10]


def test_group_folds_errors():
    with pytest.raises(DataError, match="groups"):
        group_folds(["a", "a", "b"], 3)
    with pytest.raises(UsageError):
        random_folds(10, 1)
    with pytest.raises(DataError):
        leave_one_group_out(["x", "x"])
    with pytest.raises(UsageError, match="--split"):
        st_folds("nope", samples=["a"], patients=["a"], studies=["a"])


def test_stratified_group_folds_never_split_a_slide():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"slide{i}" for i in range(10)], 12)
    labels = rng.integers(0, 3, size=len(groups))
    folds = stratified_group_folds(labels, groups, 5, seed=0)
    _is_partition(folds, len(groups))
    for f in folds:
        assert set(groups[f.test]).isdisjoint(groups[f.train])
    a = stratified_group_folds(labels, groups, 5, seed=0)
    assert all(np.array_equal(x.test, y.test) for x, y in zip(folds, a, strict=True))
