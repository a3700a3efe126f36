"""Patient-level folds: outer k-fold CV stratified by event (and site), inner splits of the training folds.

Fallbacks change the protocol, so each one is returned as a note that the job prints and records.
"""

from __future__ import annotations

import numpy as np

from mvh.errors import CohortError
from mvh.tasks.splits import Fold, random_folds, stratified_group_folds


def patient_folds(
    event: np.ndarray, site: np.ndarray | None, k: int, seed: int = 0
) -> tuple[list[Fold], list[str]]:
    """K folds over patients (rows), stratified by event, and by event x site when every stratum has k.

    Returns the folds and notes on any stratification that could not be done.
    """
    event = np.asarray(event).astype(int)
    n_events = int(event.sum())
    if len(event) < k:
        raise CohortError(f"the cohort has {len(event)} patients, fewer than --folds {k}; lower --folds")
    if n_events < k:
        raise CohortError(
            f"the cohort has {n_events} events among {len(event)} patients; a C-index per fold needs at "
            f"least --folds ({k}) events; lower --folds"
        )
    n_censored = len(event) - n_events
    if 0 < n_censored < k:
        note = f"only {n_censored} censored patients for {k} folds: folds are random, not stratified by event"
        return random_folds(len(event), k, seed), [note]
    strata = event.astype(str)
    notes = []
    if site is not None:
        combined = np.char.add(np.char.add(strata, "|"), np.asarray(site).astype(str))
        _, counts = np.unique(combined, return_counts=True)
        if counts.min() >= k:
            strata = combined
        else:
            notes.append(
                f"some event x site strata have fewer than {k} patients: folds stratified by event only"
            )
    return stratified_group_folds(strata, None, k, seed), notes


def inner_split(event: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (fit, validation) indices stratified by event; no validation if too small.

    Too small: fewer than 4 validation patients, 4 events or 2 censored patients (the caller notes it).
    """
    from sklearn.model_selection import train_test_split

    event = np.asarray(event).astype(int)
    rows = np.arange(len(event))
    n_val = int(round(fraction * len(event)))
    if fraction <= 0 or n_val < 4 or event.sum() < 4 or (1 - event).sum() < 2:
        return rows, rows[:0]
    fit, val = train_test_split(rows, test_size=n_val, stratify=event, random_state=seed)
    return np.sort(fit), np.sort(val)


def inner_folds(event: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (fit, validation) row splits of a training set, stratified by event (CoxPH penalty selection).

    Needs at least k events (CohortError otherwise); stratified when there are also k censored patients.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    event = np.asarray(event).astype(int)
    n_events, n_censored = int(event.sum()), int(len(event) - event.sum())
    if n_events < k:
        raise CohortError(
            f"a training fold has {n_events} events, fewer than --coxph-folds {k} (the CoxPH penalty is "
            "chosen by inner cross-validation); lower --coxph-folds or --folds"
        )
    rows = np.arange(len(event))
    if n_censored >= k:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(rows, event)
    else:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed).split(rows)
    return [(np.sort(fit), np.sort(val)) for fit, val in splitter]
