"""Fuzzing the cohort CSV reader (issue 11): any input ends in a Cohort or a narrow mvh error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from mvh.errors import MvhError
from mvh.tasks.survival import Cohort, read_cohort

GOOD = b"slide_id,patient_id,time,event,site\ns1,P1,10,1,A\ns2,P1,10,1,A\ns3,P2,5.5,0,B\n"
CELLS = st.sampled_from(["", "s1", "P1", "../x", "a/b", "nan", "inf", "-1", "1", "0", "2", "1e400", "abc",
                         " x ", "\x00", '"', "1.5", "True", "\u00e9", ",", "\n"])


def _read(data: bytes, available: list[str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cohort.csv"
        path.write_bytes(data)
        try:
            cohort = read_cohort(path, available, skip_missing=available is not None)
        except MvhError as exc:
            assert "\n" not in str(exc).strip()
            return
        assert isinstance(cohort, Cohort) and len(cohort.patients) >= 1
        assert cohort.patients["time"].ge(0).all() and cohort.patients["event"].isin([0, 1]).all()
        assert set(cohort.slides["patient_id"]) == set(cohort.patients["patient_id"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _read(data)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(GOOD)), st.binary(max_size=20))
def test_truncated_and_appended(cut: int, tail: bytes) -> None:
    _read(GOOD[:cut] + tail)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(CELLS, min_size=3, max_size=6), min_size=1, max_size=6), st.booleans())
def test_wrong_values_and_shapes(rows: list[list[str]], with_store: bool) -> None:
    header = "slide_id,patient_id,time,event,site"
    body = "\n".join(",".join(row) for row in rows)
    _read(f"{header}\n{body}\n".encode(), ["s1", "P1"] if with_store else None)
