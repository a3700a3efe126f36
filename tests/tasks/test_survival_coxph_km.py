"""CoxPH penalty by inner CV, failures recorded (never a constant), KM groups at the training median."""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2
from sklearn.preprocessing import StandardScaler
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from mvh.tasks.survival import SurvivalSettings, cross_validate_survival, fit_coxph, inner_folds
from mvh.tasks.survival.km import HIGH, LOW, UNKNOWN, logrank_p, split_at_training_median

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


def linear_cohort(n: int = 80, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features [n, dim], times and events with hazard exp(x_0 - x_1), ~30% censored."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    t = rng.exponential(1.0 / np.exp(x[:, 0] - x[:, 1]))
    censored = rng.random(n) < 0.3
    return x, np.where(censored, t * rng.uniform(0, 1, n), t), (~censored).astype(int)


# ------------------------------------------------------------------------------------------ KM groups
def test_groups_split_each_fold_at_its_training_median_not_the_pooled_one() -> None:
    rng = np.random.default_rng(0)
    offsets = [0.0, 10.0, -10.0]  # per-fold offsets, as Cox risks of separately fitted models carry
    train = [rng.normal(size=12) + o for o in offsets]
    test = [rng.normal(size=5) + o for o in offsets]
    pooled_median = float(np.median(np.concatenate(test)))
    pooled_groups, fold_groups = [], []
    for tr, te in zip(train, test, strict=True):
        groups, threshold = split_at_training_median(te, tr)
        expected_threshold = statistics.median(tr.tolist())
        assert threshold == pytest.approx(expected_threshold)
        assert groups.tolist() == [HIGH if r > expected_threshold else LOW for r in te]
        fold_groups += groups.tolist()
        pooled_groups += [HIGH if r > pooled_median else LOW for r in te]
    # The pooled split would put the whole +10 fold high and the whole -10 fold low.
    assert pooled_groups[5:10] == [HIGH] * 5 and pooled_groups[10:] == [LOW] * 5
    assert fold_groups != pooled_groups and LOW in fold_groups[5:10] and HIGH in fold_groups[10:]
    groups, threshold = split_at_training_median(np.array([1.0, np.nan]), np.array([np.nan, 0.0]))
    assert groups.tolist() == [UNKNOWN, UNKNOWN] and np.isnan(threshold)


def _logrank_reference(time: np.ndarray, event: np.ndarray, high: np.ndarray) -> float:
    """Two-group log-rank test from its textbook formula (hypergeometric variance), chi-square 1 df."""
    o_minus_e, var = 0.0, 0.0
    for t in np.unique(time[event == 1]):
        at_risk = time >= t
        n, n1 = at_risk.sum(), (at_risk & high).sum()
        d = ((time == t) & (event == 1)).sum()
        d1 = ((time == t) & (event == 1) & high).sum()
        o_minus_e += d1 - d * n1 / n
        if n > 1:
            var += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    return float(chi2.sf(o_minus_e**2 / var, 1))


def test_logrank_p_matches_the_textbook_formula_and_leaves_unknown_out() -> None:
    _, time, event = linear_cohort(60, seed=3)
    time = np.round(time, 1)  # ties in time
    groups = np.where(np.arange(60) % 3 == 0, HIGH, LOW).astype(np.int8)
    groups[:4] = UNKNOWN
    keep = groups != UNKNOWN
    expected = _logrank_reference(time[keep], event[keep], groups[keep] == HIGH)
    assert logrank_p(time, event, groups) == pytest.approx(expected, rel=1e-9)
    assert np.isnan(logrank_p(time, event, np.full(60, LOW, np.int8)))


# ------------------------------------------------------------------------------------------ CoxPH
def test_coxph_penalty_is_the_best_mean_inner_cv_c_index() -> None:
    x, time, event = linear_cohort()
    x_test = np.random.default_rng(9).normal(size=(10, x.shape[1]))
    inner = inner_folds(event, 4, seed=0)
    _, risk_test, choice, notes = fit_coxph(x, time, event, x_test, inner, l1_ratio=0.5, n_alphas=20)
    # Independent: sksurv's own C-index on each inner fold's path, mean over folds, first best alpha.
    def path(rows: np.ndarray, alphas=None):
        scaler = StandardScaler().fit(x[rows])
        model = CoxnetSurvivalAnalysis(l1_ratio=0.5, alpha_min_ratio=0.05, n_alphas=20, alphas=alphas)
        return scaler, model.fit(scaler.transform(x[rows]), Surv.from_arrays(event[rows] == 1, time[rows]))

    scaler, full = path(np.arange(len(x)))
    scores = []
    for fit, val in inner:
        s, m = path(fit, full.alphas_)
        scores.append([concordance_index_censored(event[val] == 1, time[val],
                                                  m.predict(s.transform(x[val]), alpha=a))[0]
                       for a in full.alphas_])
    mean = np.mean(scores, axis=0)
    best = int(np.argmax(mean))
    assert choice.alpha == pytest.approx(full.alphas_[best]) and choice.inner_c == pytest.approx(mean[best])
    assert choice.inner_folds == choice.inner_folds_scored == 4 and choice.error is None and notes == []
    np.testing.assert_allclose(risk_test, full.predict(scaler.transform(x_test), alpha=full.alphas_[best]))


def test_a_failed_coxph_fit_gives_no_risks_and_a_note(monkeypatch) -> None:
    x, time, event = linear_cohort(40)

    def fail(*args, **kwargs):
        raise ArithmeticError("Numerical error, because weights are too large")

    monkeypatch.setattr(CoxnetSurvivalAnalysis, "fit", fail)
    risk_train, risk_test, choice, notes = fit_coxph(x, time, event, x[:5], inner_folds(event, 3, 0),
                                                     what="fold 2/5")
    assert np.isnan(risk_train).all() and np.isnan(risk_test).all()
    assert choice.alpha is None and "fold 2/5 path: the fit failed (Numerical error" in choice.error
    assert notes == [choice.error]


def _bags(x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Bags of 5-15 tiles around each patient's feature vector."""
    rng = np.random.default_rng(seed)
    return {f"p{i:03d}": (row + rng.normal(0, 0.3, (int(rng.integers(5, 16)), len(row)))).astype(np.float32)
            for i, row in enumerate(x)}


FAST = {"hidden_dim": 16, "attn_dim": 8, "lr": 2e-3, "epochs": 3, "max_tiles": None, "folds": 3,
        "coxph_folds": 3, "coxph_alphas": 15}


def test_cv_km_thresholds_are_each_folds_training_median(monkeypatch) -> None:
    x, time, event = linear_cohort(60)
    bags = _bags(x)
    patients = pd.DataFrame({"patient_id": list(bags), "time": time, "event": event})
    cv = cross_validate_survival(bags, patients, SurvivalSettings(**FAST))
    frame = cv.patients
    pooled = np.stack([bags[p].astype(np.float64).mean(axis=0) for p in frame["patient_id"]])
    for fold in cv.folds:
        test, train = frame["fold"] == fold.fold, frame["fold"] != fold.fold
        # Independent recomputation of the CoxPH training risks: the stated path at the chosen alpha.
        scaler = StandardScaler().fit(pooled[train])
        model = CoxnetSurvivalAnalysis(l1_ratio=0.5, alpha_min_ratio=0.05, n_alphas=15).fit(
            scaler.transform(pooled[train]), Surv.from_arrays(event[train] == 1, time[train])
        )
        train_risk = model.predict(scaler.transform(pooled[train]), alpha=fold.coxph.alpha)
        assert fold.km_threshold["coxph"] == pytest.approx(np.median(train_risk))
        for m in ("abmil", "coxph"):
            expected = np.where(frame.loc[test, f"risk_{m}"] > fold.km_threshold[m], HIGH, LOW)
            np.testing.assert_array_equal(frame.loc[test, f"group_{m}"], expected)
    assert cv.notes == []


def test_cv_records_a_failed_coxph_fold_instead_of_a_constant(monkeypatch) -> None:
    x, time, event = linear_cohort(45)
    bags = _bags(x)
    patients = pd.DataFrame({"patient_id": list(bags), "time": time, "event": event})
    real_fit = CoxnetSurvivalAnalysis.fit
    calls = []

    def fit_failing_on_the_second_path(self, X, y):
        calls.append(len(X))
        if self.alphas is None and len(calls) == 5:  # fold 2's path: 1 path + 3 inner fits per fold
            raise ArithmeticError("weights too large")
        return real_fit(self, X, y)

    monkeypatch.setattr(CoxnetSurvivalAnalysis, "fit", fit_failing_on_the_second_path)
    cv = cross_validate_survival(bags, patients, SurvivalSettings(**FAST))
    failed = [f for f in cv.folds if f.coxph.error]
    assert len(failed) == 1 and failed[0].c_index["coxph"] is None and failed[0].uno_c["coxph"] is None
    assert failed[0].c_index["abmil"] is not None
    rows = cv.patients["fold"] == failed[0].fold
    assert cv.patients.loc[rows, "risk_coxph"].isna().all()
    assert (cv.patients.loc[rows, "group_coxph"] == UNKNOWN).all()
    assert (cv.patients.loc[~rows, "group_coxph"] != UNKNOWN).all()
    assert any("the fit failed (weights too large)" in n for n in cv.notes)
    stats = cv.c_index("coxph")
    assert stats.folds.count(None) == 1
    assert stats.mean == pytest.approx(np.mean([c for c in stats.folds if c is not None]))
