"""Every job's result names its job in results.json, so readers pick the type instead of guessing."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

import pytest

import mvh
from mvh.errors import DataError
from mvh.jobs import JobResult
from mvh.store.card import DatasetCard

# DatasetCard is the card's front matter (stored in a store's meta table), not the results of a job.
NOT_JOBS = {DatasetCard}


def _all_results() -> list[type[JobResult]]:
    for module in pkgutil.walk_packages(mvh.__path__, "mvh."):
        if module.name != "mvh.__main__" and ".models." not in module.name:
            importlib.import_module(module.name)
    found, todo = [], list(JobResult.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return [c for c in found if c.__module__.startswith("mvh.")]


def test_every_job_result_names_a_job_of_its_own() -> None:
    results = [c for c in _all_results() if c not in NOT_JOBS]
    assert len(results) >= 10
    unnamed = [c.__name__ for c in results if not c.job]
    assert not unnamed, f"results without a job name: {unnamed}"
    names = [c.job for c in results]
    assert len(names) == len(set(names)), f"two results share a job name: {sorted(names)}"


@dataclass
class _Demo(JobResult, job="demo"):
    value: int


def test_the_job_name_leads_results_json_and_another_jobs_results_are_refused() -> None:
    data = _Demo(3).to_dict()
    assert list(data) == ["job", "value"] and data["job"] == "demo"
    assert _Demo.from_dict(data) == _Demo(3) and _Demo.from_dict({"value": 3}) == _Demo(3)  # older results
    with pytest.raises(DataError, match="results of job 'survival' are not _Demo results"):
        _Demo.from_dict({"job": "survival", "value": 3})
