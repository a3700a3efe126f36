"""Patient-level cross-validation of ABMIL and the CoxPH baseline on the same folds (protocols.md s. 4).

Outer k-fold CV stratified by event (and site when given). Inside each training fold: an inner
validation split for ABMIL's early stopping, and inner k-fold CV for the CoxPH penalty; the test fold is
never looked at before its risks are predicted. Harrell's C is computed per test fold and reported as
mean +- std (ddof=0); Kaplan-Meier groups split each test fold at its training-set median risk (km.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mvh.core.device import resolve_device
from mvh.errors import DataError
from mvh.progress import FOLDS, Event, Progress, report
from mvh.tasks.survival.abmil import predict_abmil, train_abmil
from mvh.tasks.survival.bags import BagList, mean_pool
from mvh.tasks.survival.cohort import listing
from mvh.tasks.survival.coxph import CoxphChoice, fit_coxph
from mvh.tasks.survival.folds import inner_folds, inner_split, patient_folds
from mvh.tasks.survival.km import split_at_training_median
from mvh.tasks.survival.losses import time_bin_edges
from mvh.tasks.survival.metrics import harrell_c, uno_c
from mvh.tasks.survival.settings import MODELS, SurvivalSettings


@dataclass
class Stats:
    """Mean and std (ddof=0) over the folds that have a value, and every fold's value (None if undefined)."""

    mean: float | None
    std: float | None
    folds: list[float | None]

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        """Stats of per-fold values (NaN = undefined for that fold)."""
        arr = np.asarray(values, dtype=np.float64)
        ok = arr[~np.isnan(arr)]
        return cls(
            float(ok.mean()) if ok.size else None,
            float(ok.std()) if ok.size else None,
            [None if np.isnan(v) else float(v) for v in arr],
        )


@dataclass
class FoldResult:
    """What happened in one outer fold."""

    fold: int
    n_train: int
    n_fit: int
    n_val: int
    n_test: int
    test_events: int
    early_stopping: bool
    epochs_run: int
    best_epoch: int
    best_val_loss: float | None
    best_val_c: float | None
    c_index: dict[str, float | None]
    uno_c: dict[str, float | None]
    km_threshold: dict[str, float | None]
    coxph: CoxphChoice


@dataclass
class SurvivalCV:
    """Out-of-fold results: `patients` has fold, risk_<model> and group_<model> (1 high, 0 low, -1 none)."""

    patients: pd.DataFrame
    folds: list[FoldResult]
    attention: dict[str, np.ndarray]
    notes: list[str]

    def c_index(self, model: str) -> Stats:
        """Harrell's C of `model` per test fold."""
        return Stats.of([np.nan if f.c_index[model] is None else f.c_index[model] for f in self.folds])

    def uno_c(self, model: str) -> Stats:
        """Uno's C of `model` per test fold."""
        return Stats.of([np.nan if f.uno_c[model] is None else f.uno_c[model] for f in self.folds])


def _value(x: float | None) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def cross_validate_survival(
    bags: Mapping[str, np.ndarray],
    patients: pd.DataFrame,
    settings: SurvivalSettings,
    *,
    attention_for: Collection[str] = (),
    progress: Progress | None = None,
) -> SurvivalCV:
    """Patient-level k-fold CV of ABMIL and the CoxPH baseline on the same folds.

    `patients` has patient_id, time, event (and optional site); `bags[patient_id]` is [N_i, dim].
    Out-of-fold attention [N_i] is returned for the patients in `attention_for`. Torch runs on
    `settings.threads` threads meanwhile (restored afterwards).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _cross_validate(bags, patients, settings, attention_for, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _cross_validate(
    bags: Mapping[str, np.ndarray],
    patients: pd.DataFrame,
    settings: SurvivalSettings,
    attention_for: Collection[str],
    progress: Progress | None,
) -> SurvivalCV:
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        report(progress, Event.NOTE, FOLDS, detail=text)

    device = resolve_device(settings.device)
    ids = patients["patient_id"].astype(str).tolist()
    id_array = np.asarray(ids, dtype=object)  # fancy-indexed by fold rows
    time = patients["time"].to_numpy(np.float64)
    event = patients["event"].to_numpy(np.int64)
    site = patients["site"].to_numpy() if "site" in patients.columns else None
    empty = [p for p in ids if len(bags[p]) == 0]
    if empty:
        raise DataError(f"patient(s) {listing(empty)} have no tiles in the store; re-extract their slides")
    folds, fold_notes = patient_folds(event, site, settings.folds, settings.seed)
    for text in fold_notes:
        note(text)
    # Every inner split is made (and checked) before any training, so a bad setting fails in seconds.
    splits = [inner_split(event[f.train], settings.val_fraction, settings.seed + f.index) for f in folds]
    coxph_inner = [inner_folds(event[f.train], settings.coxph_folds, settings.seed + f.index) for f in folds]
    for f in folds:
        censored = int(len(f.train) - event[f.train].sum())
        if censored < settings.coxph_folds:
            note(f"fold {f.index + 1}/{len(folds)}: {censored} censored training patients for --coxph-folds "
                 f"{settings.coxph_folds}: the CoxPH inner folds are not stratified by event")
    pooled = mean_pool(bags, ids)
    risk = {m: np.full(len(ids), np.nan) for m in MODELS}
    groups = {m: np.full(len(ids), -1, dtype=np.int8) for m in MODELS}
    fold_of = np.full(len(ids), -1, dtype=np.int64)
    results, attention = [], {}
    wanted = set(attention_for)
    report(progress, Event.TOTAL, FOLDS, len(folds))
    for fold, (fit_rows, val_rows), inner in zip(folds, splits, coxph_inner, strict=True):
        tag = f"fold {fold.index + 1}/{len(folds)}"
        tr, te = fold.train, fold.test
        fit_idx, val_idx = tr[fit_rows], tr[val_rows]
        if not len(val_idx) and settings.val_fraction > 0:
            note(f"{tag}: the training set ({len(tr)} patients, {int(event[tr].sum())} events) is too small "
                 f"for a validation split; ABMIL trained all {settings.epochs} epochs without early stopping")
        edges = time_bin_edges(time[tr], event[tr], settings.n_bins) if settings.loss == "nll" else None
        val = (BagList(bags, id_array[val_idx]), time[val_idx], event[val_idx]) if len(val_idx) else None

        def epoch_status(epoch: int, loss: float, tag: str = tag) -> None:
            report(progress, Event.STATUS, FOLDS, detail=f"{tag} ABMIL epoch {epoch} loss {loss:.4g}")

        model, trained = train_abmil(
            BagList(bags, id_array[fit_idx]), time[fit_idx], event[fit_idx], settings,
            val=val, bin_edges=edges, seed=settings.seed * 1000 + fold.index, device=device,
            on_epoch=epoch_status,
        )
        train_risk = {}
        train_risk["abmil"], _ = predict_abmil(model, BagList(bags, id_array[tr]), settings.loss, device)
        test_risk, test_attention = predict_abmil(model, BagList(bags, id_array[te]), settings.loss, device)
        risk["abmil"][te] = test_risk
        for i, att in zip(te, test_attention, strict=True):
            if ids[i] in wanted:
                attention[ids[i]] = att
        report(progress, Event.STATUS, FOLDS, detail=f"{tag} CoxPH inner CV")
        train_risk["coxph"], risk["coxph"][te], choice, cox_notes = fit_coxph(
            pooled[tr], time[tr], event[tr], pooled[te], inner,
            l1_ratio=settings.l1_ratio, n_alphas=settings.coxph_alphas, what=tag,
        )
        for text in cox_notes:
            note(text)
        fold_of[te] = fold.index
        c_index, uno, threshold = {}, {}, {}
        for m in MODELS:
            groups[m][te], threshold[m] = split_at_training_median(risk[m][te], train_risk[m])
            defined = not np.isnan(risk[m][te]).any()
            c_index[m] = _value(harrell_c(event[te], time[te], risk[m][te])) if defined else None
            uno[m] = _value(uno_c(event[tr], time[tr], event[te], time[te], risk[m][te])) if defined else None
        results.append(FoldResult(
            fold=fold.index, n_train=len(tr), n_fit=len(fit_idx), n_val=len(val_idx), n_test=len(te),
            test_events=int(event[te].sum()), early_stopping=bool(len(val_idx)),
            epochs_run=trained.epochs_run, best_epoch=trained.best_epoch,
            best_val_loss=trained.best_val_loss, best_val_c=trained.best_val_c,
            c_index=c_index, uno_c=uno, km_threshold={m: _value(t) for m, t in threshold.items()},
            coxph=choice,
        ))
        report(progress, Event.ADVANCE, FOLDS, 1)
    frame = patients.copy().reset_index(drop=True)
    frame["fold"] = fold_of
    for m in MODELS:
        frame[f"risk_{m}"] = risk[m]
        frame[f"group_{m}"] = groups[m]
    return SurvivalCV(frame, results, attention, notes)
