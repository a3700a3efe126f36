"""Kaplan-Meier risk groups: each fold's test patients split at that fold's TRAINING-set median risk.

Risks of different folds come from different models (a Cox model's risk carries a per-fold offset), so
a median over pooled out-of-fold risks would put whole folds on one side. Each test patient is instead
compared with the median risk that its own fold's model gives the training patients: high risk when
its risk is strictly above that median. The groups of all folds are then pooled for the KM curves and
the log-rank test (lifelines' `logrank_test`).
"""

from __future__ import annotations

import numpy as np

HIGH, LOW, UNKNOWN = 1, 0, -1


def split_at_training_median(test_risk: np.ndarray, train_risk: np.ndarray) -> tuple[np.ndarray, float]:
    """Groups [m] (HIGH if risk > median of `train_risk` [n], else LOW; UNKNOWN for NaN) and the median."""
    test_risk = np.asarray(test_risk, dtype=np.float64)
    train_risk = np.asarray(train_risk, dtype=np.float64)
    groups = np.full(len(test_risk), UNKNOWN, dtype=np.int8)
    if len(train_risk) == 0 or np.isnan(train_risk).any():
        return groups, float("nan")
    threshold = float(np.median(train_risk))
    known = ~np.isnan(test_risk)
    groups[known] = np.where(test_risk[known] > threshold, HIGH, LOW)
    return groups, threshold


def logrank_p(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> float:
    """Log-rank p of HIGH vs LOW (UNKNOWN rows left out); NaN when a group is empty."""
    from lifelines.statistics import logrank_test

    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(bool)
    high, low = groups == HIGH, groups == LOW
    if not high.any() or not low.any():
        return float("nan")
    test = logrank_test(time[high], time[low], event_observed_A=event[high], event_observed_B=event[low])
    return float(test.p_value)
