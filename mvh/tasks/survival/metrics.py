"""Survival metrics: Harrell's C-index (sksurv's tie conventions) and Uno's IPCW C-index.

Sign convention: a higher `risk` means an earlier event (as in sksurv). lifelines' `concordance_index`
expects survival-like scores, so `harrell_c(event, time, risk) == concordance_index(time, -risk, event)`.
"""

from __future__ import annotations

import numpy as np

from mvh.errors import DataError

TIE_TOL = 1e-8


def _as_arrays(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, ...]:
    event = np.asarray(event).astype(bool).ravel()
    time = np.asarray(time, dtype=np.float64).ravel()
    risk = np.asarray(risk, dtype=np.float64).ravel()
    if not (event.shape == time.shape == risk.shape):
        raise DataError(
            f"event, time and risk must have the same length (got {event.size}, {time.size}, {risk.size}); "
            "pass one value per patient"
        )
    if not np.isfinite(risk).all():
        raise DataError("risk scores contain NaN or inf; check the model's outputs")
    return event, time, risk


def concordance_counts(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> dict[str, int]:
    """Count concordant, discordant, risk-tied and comparable pairs (sksurv's definitions).

    A pair (i, j) is comparable when i has an event and either t_j > t_i, or t_j == t_i and j is
    censored. Risks within `TIE_TOL` count as tied (half a concordant pair).
    """
    event, time, risk = _as_arrays(event, time, risk)
    concordant = discordant = tied = comparable = 0
    for i in np.flatnonzero(event):
        partners = (time > time[i]) | ((time == time[i]) & ~event)
        if not partners.any():
            continue
        diff = risk[i] - risk[partners]
        is_tied = np.abs(diff) <= TIE_TOL
        comparable += int(partners.sum())
        tied += int(is_tied.sum())
        concordant += int(((diff > 0) & ~is_tied).sum())
        discordant += int(((diff < 0) & ~is_tied).sum())
    return {"concordant": concordant, "discordant": discordant, "tied_risk": tied, "comparable": comparable}


def harrell_c(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index of `risk` (higher = earlier event); NaN when no pair is comparable."""
    counts = concordance_counts(event, time, risk)
    if counts["comparable"] == 0:
        return float("nan")
    return (counts["concordant"] + 0.5 * counts["tied_risk"]) / counts["comparable"]


def uno_c(
    event_train: np.ndarray,
    time_train: np.ndarray,
    event_test: np.ndarray,
    time_test: np.ndarray,
    risk: np.ndarray,
    tau: float | None = None,
) -> float:
    """Uno's IPCW C-index (sksurv), censoring estimated on the training patients; NaN if undefined.

    `tau` defaults to the largest training time, beyond which the censoring distribution is unknown.
    """
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.util import Surv

    train = Surv.from_arrays(np.asarray(event_train).astype(bool), np.asarray(time_train, dtype=float))
    test = Surv.from_arrays(np.asarray(event_test).astype(bool), np.asarray(time_test, dtype=float))
    tau = float(np.max(time_train)) if tau is None else tau
    try:
        return float(concordance_index_ipcw(train, test, np.asarray(risk, dtype=float), tau=tau)[0])
    except (ValueError, ZeroDivisionError):
        # Raised when no test pair is comparable before tau or censoring survival reaches zero.
        return float("nan")
