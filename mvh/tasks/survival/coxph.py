"""The linear baseline: elastic-net CoxPH (sksurv Coxnet) on mean-pooled, standardised slide embeddings.

The penalty is chosen by inner cross-validation on the training folds only: one regularisation path is
fitted on all training patients, each inner fold refits that path on its own training part (its own
standardisation) and scores every penalty by Harrell's C on its validation part; the penalty with the
best mean inner C wins (the strongest one on ties) and the all-training path predicts at it. Nothing is
silent: a fit that fails or does not converge is returned as a note, and a fold whose final fit fails
gets no risks (NaN), never a constant stand-in.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mvh.tasks.survival.metrics import harrell_c

ALPHA_MIN_RATIO = 0.05


@dataclass
class CoxphChoice:
    """The penalty chosen for one outer fold, and how it was chosen."""

    alpha: float | None
    l1_ratio: float
    inner_folds: int
    inner_folds_scored: int
    inner_c: float | None
    n_nonzero: int | None
    error: str | None = None


def _fit_path(x: np.ndarray, time: np.ndarray, event: np.ndarray, l1_ratio: float, n_alphas: int,
              alphas: np.ndarray | None, notes: list[str], what: str) -> tuple[Any, Any] | None:
    """(scaler, Coxnet path model) fitted on x [n, d]; None (and a note) if the fit fails."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    scaler = StandardScaler().fit(x)
    model = CoxnetSurvivalAnalysis(
        l1_ratio=l1_ratio, alpha_min_ratio=ALPHA_MIN_RATIO, n_alphas=n_alphas, alphas=alphas
    )
    y = Surv.from_arrays(np.asarray(event).astype(bool), np.asarray(time, dtype=np.float64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        # The largest penalties of a path zero every coefficient by design.
        warnings.filterwarnings("ignore", message="all coefficients are zero", category=UserWarning)
        try:
            model.fit(scaler.transform(x), y)
        except ArithmeticError as exc:
            notes.append(f"CoxPH {what}: the fit failed ({' '.join(str(exc).split())})")
            return None
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            notes.append(f"CoxPH {what}: {' '.join(str(warning.message).split())}")
    return scaler, model


def fit_coxph(
    x_train: np.ndarray,
    time_train: np.ndarray,
    event_train: np.ndarray,
    x_test: np.ndarray,
    inner: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    l1_ratio: float = 0.5,
    n_alphas: int = 30,
    what: str = "",
) -> tuple[np.ndarray, np.ndarray, CoxphChoice, list[str]]:
    """Fit the baseline on [n, d] training features; penalty by inner CV over `inner` (fit, val) rows.

    Returns risks of the training [n] and test [m] patients (NaN when the final fit failed), the choice
    made, and notes on every failed or non-converged fit.
    """
    time_train = np.asarray(time_train, dtype=np.float64)
    event_train = np.asarray(event_train).astype(int)
    notes: list[str] = []
    nan_train, nan_test = np.full(len(x_train), np.nan), np.full(len(x_test), np.nan)
    full = _fit_path(x_train, time_train, event_train, l1_ratio, n_alphas, None, notes, f"{what} path")
    if full is None:
        return nan_train, nan_test, CoxphChoice(None, l1_ratio, len(inner), 0, None, None, notes[-1]), notes
    scaler, path = full
    alphas = np.asarray(path.alphas_, dtype=np.float64)
    scores = np.full((len(inner), len(alphas)), np.nan)
    for j, (fit_rows, val_rows) in enumerate(inner):
        fitted = _fit_path(x_train[fit_rows], time_train[fit_rows], event_train[fit_rows], l1_ratio, n_alphas,
                           alphas, notes, f"{what} inner fold {j + 1}")
        if fitted is None:
            continue
        inner_scaler, model = fitted
        x_val = inner_scaler.transform(x_train[val_rows])
        scores[j] = [harrell_c(event_train[val_rows], time_train[val_rows], model.predict(x_val, alpha=a))
                     for a in alphas]
    scored = ~np.isnan(scores).all(axis=1)
    if not scored.any():
        error = f"CoxPH {what}: no inner fold could be scored, so no penalty was chosen (no risks)"
        notes.append(error)
        return nan_train, nan_test, CoxphChoice(None, l1_ratio, len(inner), 0, None, None, error), notes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a penalty no scored fold could rank: all NaN
        mean_c = np.nanmean(scores[scored], axis=0)
    best = int(np.nanargmax(mean_c))
    alpha = float(alphas[best])
    coef = np.asarray(path.coef_)[:, best]
    choice = CoxphChoice(alpha, l1_ratio, len(inner), int(scored.sum()), float(mean_c[best]),
                         int(np.count_nonzero(coef)))
    risk_train = path.predict(scaler.transform(x_train), alpha=alpha)
    risk_test = path.predict(scaler.transform(x_test), alpha=alpha)
    return np.asarray(risk_train, np.float64), np.asarray(risk_test, np.float64), choice, notes
