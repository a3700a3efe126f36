"""Harrell's C equals sksurv and lifelines (sign convention) on random data with ties; Uno's C sanity."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines.utils import concordance_index
from sksurv.metrics import concordance_index_censored

from mvh.errors import DataError
from mvh.tasks.survival.metrics import concordance_counts, harrell_c, uno_c


def _random(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    time = rng.integers(1, 8, size=n).astype(float)  # many tied times
    event = rng.random(n) < 0.6
    risk = rng.integers(0, 5, size=n).astype(float)  # many tied risks
    event[0] = True
    return event, time, risk


@pytest.mark.parametrize("seed", range(12))
def test_harrell_c_equals_sksurv_and_lifelines_with_ties(seed: int) -> None:
    event, time, risk = _random(seed)
    ours = harrell_c(event, time, risk)
    sk = concordance_index_censored(event, time, risk)
    assert ours == pytest.approx(sk[0], abs=1e-12)
    assert ours == pytest.approx(concordance_index(time, -risk, event), abs=1e-12)
    counts = concordance_counts(event, time, risk)
    assert (counts["concordant"], counts["discordant"], counts["tied_risk"]) == tuple(int(v) for v in sk[1:4])


def test_perfect_and_reversed_rankings() -> None:
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.ones(4, dtype=bool)
    assert harrell_c(event, time, -time) == 1.0
    assert harrell_c(event, time, time) == 0.0
    assert harrell_c(event, time, np.zeros(4)) == 0.5


def test_no_comparable_pair_is_nan_and_bad_input_is_an_error() -> None:
    assert np.isnan(harrell_c(np.zeros(3, bool), np.arange(3.0), np.arange(3.0)))
    with pytest.raises(DataError, match="same length"):
        harrell_c(np.ones(3, bool), np.arange(3.0), np.arange(2.0))
    with pytest.raises(DataError, match="NaN"):
        harrell_c(np.ones(2, bool), np.arange(2.0), np.array([0.0, np.nan]))


def test_uno_c_equals_harrell_without_censoring() -> None:
    rng = np.random.default_rng(3)
    t_train, t_test = rng.exponential(size=200), rng.uniform(0.01, 1.0, size=30)
    risk = -t_test + rng.normal(0, 0.3, size=30)
    e_test = np.ones(30, bool)
    got = uno_c(np.ones(200, bool), t_train, e_test, t_test, risk)
    assert got == pytest.approx(harrell_c(e_test, t_test, risk), abs=1e-12)


def test_risks_within_1e8_are_tied_as_in_sksurv_not_lifelines() -> None:
    """The documented reference: sksurv's concordance_index_censored (tied_tol=1e-8); lifelines ties only
    exactly equal risks, so the two differ here, and results.json says which one mvh follows."""
    from mvh.tasks.survival.job import DEFINITIONS

    event = np.array([True, True, False])
    time = np.array([1.0, 2.0, 3.0])
    risk = np.array([0.5, 0.5 + 5e-9, 0.1])  # the first pair is discordant by 5e-9: a tie within 1e-8
    sk = concordance_index_censored(event, time, risk)[0]
    assert harrell_c(event, time, risk) == pytest.approx(sk, abs=1e-15)
    assert sk != pytest.approx(concordance_index(time, -risk, event), abs=1e-6)
    assert "concordance_index_censored" in DEFINITIONS["c_index"] and "1e-8" in DEFINITIONS["c_index"]
    assert "not the standard error" in DEFINITIONS["c_index"]
