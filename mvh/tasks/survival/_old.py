"""Patient-level survival from stored tile embeddings: attention MIL (ABMIL) vs a CoxPH baseline.

Protocol (spec/protocols.md section 4): patient-level k-fold cross-validation stratified by event (and
site when given); inside each training fold an inner validation split (stratified by event) is used for
early stopping of ABMIL and for choosing the CoxPH elastic-net penalty, never the test fold. Every patient
gets an out-of-fold risk; Harrell's C is computed per test fold and reported as mean +- std (ddof=0).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mvh.errors import CohortError, DataError, SlideError, UsageError
from mvh.extractor.device import resolve_device
from mvh.extractor.slide import open_slide
from mvh.index.store import EmbeddingStore
from mvh.tasks.mil import ABMIL, pad_bags
from mvh.tasks.splits import Fold, random_folds, stratified_group_folds
from mvh.tasks.survival.figures import plot_attention_heatmap, plot_km
from mvh.tasks.survival.losses import cox_ph_loss, nll_risk, nll_survival_loss, time_bin_edges, time_to_bin
from mvh.tasks.survival.metrics import harrell_c, uno_c

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("slide_id", "patient_id", "time", "event")
LOSSES = ("cox", "nll")
MODELS = ("abmil", "coxph")
Progress = Callable[[str, int], None]


# ---------------------------------------------------------------------------------------------- cohort
@dataclass(frozen=True)
class Cohort:
    """A validated cohort: `slides` (slide_id, patient_id), `patients` (patient_id, time, event[, site])."""

    slides: pd.DataFrame
    patients: pd.DataFrame
    skipped_slides: tuple[str, ...] = ()
    dropped_patients: tuple[str, ...] = ()

    @property
    def has_site(self) -> bool:
        """True when the cohort names a tissue source site per patient."""
        return "site" in self.patients.columns

    def slides_by_patient(self) -> dict[str, list[str]]:
        """Sorted slide ids of each patient."""
        grouped = self.slides.sort_values("slide_id").groupby("patient_id", sort=True)["slide_id"]
        return {str(pid): list(ids) for pid, ids in grouped}


def _listing(values: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" (and {len(values) - limit} more)" if len(values) > limit else "")


def read_cohort(
    path: Path, available: Collection[str] | None = None, skip_missing: bool = False
) -> Cohort:
    """Read and validate a cohort CSV (slide_id, patient_id, time, event[, site]); CohortError on problems.

    `available` are the slide ids in the store: absent slides are an error unless `skip_missing`, which
    drops them (and patients left without slides) and reports them in the returned cohort.
    """
    path = Path(path)
    if not path.is_file():
        raise CohortError(
            f"{path}: no such cohort file; pass a CSV with columns {', '.join(REQUIRED_COLUMNS)}"
        )
    try:
        table = pd.read_csv(path, dtype={"slide_id": str, "patient_id": str, "site": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise CohortError(f"{path}: not a readable CSV ({reason}); write it with a header row") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise CohortError(
            f"{path}: missing column(s) {', '.join(missing)}; the cohort needs "
            f"{', '.join(REQUIRED_COLUMNS)} (site optional)"
        )
    if table.empty:
        raise CohortError(f"{path}: the cohort has no rows; add one row per slide")
    columns = [*REQUIRED_COLUMNS, *(["site"] if "site" in table.columns else [])]
    table = table[columns].copy()
    for name in ("slide_id", "patient_id"):
        blank = table[name].isna() | (table[name].astype(str).str.strip() == "")
        if blank.any():
            rows = (np.flatnonzero(blank.to_numpy()) + 2).tolist()
            raise CohortError(f"{path}: empty {name} on line(s) {_listing(rows)}; fill them in")
        table[name] = table[name].astype(str).str.strip()
    if "site" in table.columns:
        table["site"] = table["site"].fillna("").astype(str).str.strip()

    time = pd.to_numeric(table["time"], errors="coerce")
    bad = table.loc[time.isna() | ~np.isfinite(time.fillna(0.0)), "slide_id"].tolist()
    if bad:
        raise CohortError(f"{path}: time is not a finite number for slide(s) {_listing(bad)}; fix those rows")
    negative = table.loc[time < 0, "slide_id"].tolist()
    if negative:
        raise CohortError(f"{path}: negative time for slide(s) {_listing(negative)}; times must be >= 0")
    event = pd.to_numeric(table["event"], errors="coerce")
    bad_event = table.loc[~event.isin([0, 1]), ["slide_id", "event"]]
    if len(bad_event):
        shown = [f"{s}={e}" for s, e in bad_event.itertuples(index=False)]
        raise CohortError(
            f"{path}: event must be 0 (censored) or 1 (event); got {_listing(shown)}; fix those rows"
        )
    table["time"] = time.astype(np.float64)
    table["event"] = event.astype(np.int64)

    table = table.drop_duplicates()
    dup = table.loc[table["slide_id"].duplicated(keep=False), "slide_id"].unique().tolist()
    if dup:
        raise CohortError(f"{path}: slide(s) {_listing(dup)} listed on several rows with different values; "
                          "keep one row per slide")
    outcome = [c for c in ("time", "event", "site") if c in table.columns]
    conflicting = [str(pid) for pid, rows in table.groupby("patient_id", sort=True)
                   if len(rows[outcome].drop_duplicates()) > 1]
    if conflicting:
        raise CohortError(
            f"{path}: patient(s) {_listing(conflicting)} have slides with different {'/'.join(outcome)}; "
            "give every slide of a patient the same outcome"
        )

    skipped: list[str] = []
    if available is not None:
        present = table["slide_id"].isin(set(available))
        skipped = sorted(table.loc[~present, "slide_id"].tolist())
        if skipped and not skip_missing:
            raise CohortError(
                f"{path}: {len(skipped)} slide(s) are not in the store: {_listing(skipped)}; "
                "extract them, fix the ids, or pass --skip-missing"
            )
        if skipped:
            log.warning("skipping %d slide(s) absent from the store: %s", len(skipped), _listing(skipped))
        before = set(table["patient_id"])
        table = table.loc[present]
        dropped = sorted(before - set(table["patient_id"]))
    else:
        dropped = []
    if table.empty:
        raise CohortError(f"{path}: none of the cohort's slides is in the store; check the slide ids")
    patients = (
        table.drop(columns="slide_id").drop_duplicates("patient_id").sort_values("patient_id")
        .reset_index(drop=True)
    )
    slides = table[["slide_id", "patient_id"]].sort_values("slide_id").reset_index(drop=True)
    return Cohort(slides, patients, tuple(skipped), tuple(dropped))


# ---------------------------------------------------------------------------------------------- bags
class StoreBags(Mapping[str, np.ndarray]):
    """Patient bags streamed from a store: patient_id -> tile embeddings [N, dim] of all its slides.

    Slides are read on demand and the concatenated bags kept in an LRU cache of `cache_bytes`.
    """

    def __init__(
        self,
        store: EmbeddingStore,
        slides_by_patient: Mapping[str, Sequence[str]],
        cache_bytes: int = 4 << 30,
    ) -> None:
        self.store = store
        self.slides_by_patient = {str(k): list(v) for k, v in slides_by_patient.items()}
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cached_bytes = 0

    def __getitem__(self, patient_id: str) -> np.ndarray:
        if patient_id in self._cache:
            self._cache.move_to_end(patient_id)
            return self._cache[patient_id]
        parts = [self.store.slide_embeddings(s)[0] for s in self.slides_by_patient[patient_id]]
        bag = np.concatenate(parts, axis=0) if parts else np.zeros((0, self.store.dim), np.float32)
        if bag.nbytes <= self.cache_bytes:
            self._cache[patient_id] = bag
            self._cached_bytes += bag.nbytes
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.nbytes
        return bag

    def slide_span(self, patient_id: str, slide_id: str) -> tuple[int, int]:
        """Rows [start, stop) of `slide_id` inside the bag of `patient_id` (slides in the given order)."""
        n_tiles = self.store.slides().set_index("slide_id")["n_tiles"]
        order = self.slides_by_patient[patient_id]
        start = int(sum(n_tiles[s] for s in order[: order.index(slide_id)]))
        return start, start + int(n_tiles[slide_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self.slides_by_patient)

    def __len__(self) -> int:
        return len(self.slides_by_patient)


def mean_pool(bags: Mapping[str, np.ndarray], patient_ids: Sequence[str]) -> np.ndarray:
    """Mean tile embedding of each patient's bag -> [P, dim] float64."""
    return np.stack([np.asarray(bags[p], dtype=np.float64).mean(axis=0) for p in patient_ids])


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SurvivalConfig:
    """Settings of one survival evaluation (saved in results.json)."""

    loss: str = "cox"
    n_bins: int = 4
    folds: int = 5
    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-4
    batch_size: int = 16
    max_tiles: int | None = 4096
    val_fraction: float = 0.2
    patience: int = 5
    hidden_dim: int = 256
    attn_dim: int = 128
    dropout: float = 0.25
    nll_alpha: float = 0.0
    l1_ratio: float = 0.5
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UsageError(f"--loss {self.loss!r} is unknown; use one of {', '.join(LOSSES)}")
        checks = [
            ("--folds", self.folds, self.folds >= 2, ">= 2"),
            ("--epochs", self.epochs, self.epochs >= 1, ">= 1"),
            ("--bins", self.n_bins, self.n_bins >= 2, ">= 2"),
            ("--lr", self.lr, self.lr > 0, "> 0"),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("--max-tiles", self.max_tiles, self.max_tiles is None or self.max_tiles >= 1, ">= 1"),
            ("val_fraction", self.val_fraction, 0.0 <= self.val_fraction < 1.0, "in [0, 1)"),
            ("patience", self.patience, self.patience >= 1, ">= 1"),
        ]
        for name, value, ok, rule in checks:
            if not ok:
                raise UsageError(f"{name} {value} is out of range: it must be {rule}")


# ---------------------------------------------------------------------------------------------- folds
def patient_folds(event: np.ndarray, site: np.ndarray | None, k: int, seed: int = 0) -> list[Fold]:
    """K folds over patients (rows), stratified by event, and by event x site when every stratum has k."""
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
        log.warning("only %d censored patients for %d folds: folds not stratified by event", n_censored, k)
        return random_folds(len(event), k, seed)
    strata = event.astype(str)
    if site is not None:
        combined = np.char.add(np.char.add(strata, "|"), np.asarray(site).astype(str))
        _, counts = np.unique(combined, return_counts=True)
        if counts.min() >= k:
            strata = combined
        else:
            log.warning("some event x site strata have fewer than %d patients: stratifying by event only", k)
    return stratified_group_folds(strata, None, k, seed)


def inner_split(event: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (fit, validation) indices stratified by event; no validation if too small."""
    from sklearn.model_selection import train_test_split

    event = np.asarray(event).astype(int)
    rows = np.arange(len(event))
    n_val = int(round(fraction * len(event)))
    if fraction <= 0 or n_val < 4 or event.sum() < 4 or (1 - event).sum() < 2:
        return rows, rows[:0]
    fit, val = train_test_split(rows, test_size=n_val, stratify=event, random_state=seed)
    return np.sort(fit), np.sort(val)


# ---------------------------------------------------------------------------------------------- ABMIL
def _risk_from_outputs(outputs: torch.Tensor, loss: str) -> torch.Tensor:
    return outputs[:, 0] if loss == "cox" else nll_risk(outputs)


@torch.no_grad()
def _bag_outputs(
    model: ABMIL, bags: Sequence[np.ndarray], device: torch.device
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Eval-mode outputs [P, n_out] and attention [N_i] per bag, each full bag in one pass."""
    model.eval()
    outputs, attentions = [], []
    for bag in bags:
        x = torch.from_numpy(np.ascontiguousarray(bag, dtype=np.float32)).to(device)
        out, attention = model(x)
        outputs.append(out[0])
        attentions.append(attention[0].float().cpu().numpy())
    return torch.stack(outputs), attentions


def predict_abmil(
    model: ABMIL, bags: Sequence[np.ndarray], loss: str, device: torch.device
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Risk [P] (higher = earlier event) and attention [N_i] per bag; full bags, never subsampled."""
    outputs, attentions = _bag_outputs(model, bags, device)
    return _risk_from_outputs(outputs, loss).double().cpu().numpy(), attentions


def _loss(
    outputs: torch.Tensor, time: torch.Tensor, event: torch.Tensor, bins: torch.Tensor | None,
    config: SurvivalConfig,
) -> torch.Tensor:
    if config.loss == "cox":
        return cox_ph_loss(outputs[:, 0], time, event)
    assert bins is not None
    return nll_survival_loss(outputs, bins, event, alpha=config.nll_alpha)


def _sample_tiles(bag: np.ndarray, max_tiles: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_tiles is None or len(bag) <= max_tiles:
        return bag
    return bag[np.sort(rng.choice(len(bag), size=max_tiles, replace=False))]


@dataclass
class TrainReport:
    """What happened while training one fold's ABMIL."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float | None
    best_val_c: float | None
    losses: list[float] = field(default_factory=list)


def _targets(
    time: np.ndarray, event: np.ndarray, bin_edges: np.ndarray | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Times [P], events [P] and, for the NLL loss, time-bin indices [P] as tensors on `device`."""
    bins = None if bin_edges is None else torch.as_tensor(time_to_bin(time, bin_edges), device=device)
    return (
        torch.as_tensor(time, dtype=torch.float32, device=device),
        torch.as_tensor(event, dtype=torch.float32, device=device),
        bins,
    )


def _train_epoch(
    model: ABMIL,
    optimiser: torch.optim.Optimizer,
    bags: Sequence[np.ndarray],
    targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    config: SurvivalConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> float:
    """One pass over shuffled patients in steps of `config.batch_size` bags (padded); mean step loss."""
    model.train()
    time, event, bins = targets
    order = rng.permutation(len(bags))
    losses = []
    for start in range(0, len(order), config.batch_size):
        idx = order[start : start + config.batch_size]
        sel = torch.as_tensor(idx, device=device)
        if config.loss == "cox" and event[sel].sum() == 0:
            continue  # no event: the partial likelihood carries no information
        sampled = [_sample_tiles(bags[i], config.max_tiles, rng) for i in idx]
        x, mask = pad_bags([torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for b in sampled])
        outputs, _ = model(x.to(device), mask.to(device))
        loss = _loss(outputs, time[sel], event[sel], None if bins is None else bins[sel], config)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def train_abmil(
    bags: Sequence[np.ndarray],
    time: np.ndarray,
    event: np.ndarray,
    config: SurvivalConfig,
    *,
    val: tuple[Sequence[np.ndarray], np.ndarray, np.ndarray] | None = None,
    bin_edges: np.ndarray | None = None,
    seed: int = 0,
    device: torch.device | None = None,
) -> tuple[ABMIL, TrainReport]:
    """Train ABMIL on bags [N_i, dim] with AdamW; early-stop on the loss of `val` (bags, time, event).

    Each optimiser step's loss covers `config.batch_size` patients (a Cox partial likelihood needs several
    events per step); bags larger than `config.max_tiles` are randomly subsampled, afresh every epoch.
    The returned model holds the weights of the best validation epoch (the last epoch without `val`).
    """
    device = device or resolve_device(config.device)
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(np.int64)
    if config.loss == "nll" and bin_edges is None:
        bin_edges = time_bin_edges(time, event, config.n_bins)
    n_out = 1 if config.loss == "cox" else config.n_bins
    rng = np.random.default_rng(seed)
    targets = _targets(time, event, bin_edges, device)
    val_targets = None if val is None else _targets(np.asarray(val[1], np.float64), val[2], bin_edges, device)
    report = TrainReport(epochs_run=0, best_epoch=config.epochs, best_val_loss=None, best_val_c=None)
    best_state, best_loss, stale = None, math.inf, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = ABMIL(bags[0].shape[1], config.hidden_dim, config.attn_dim, n_out, config.dropout).to(device)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        for epoch in range(1, config.epochs + 1):
            report.losses.append(_train_epoch(model, optimiser, bags, targets, config, rng, device))
            report.epochs_run = epoch
            if val is None or val_targets is None:
                continue
            val_out, _ = _bag_outputs(model, val[0], device)
            val_loss = float(_loss(val_out, *val_targets, config))
            if val_loss < best_loss:
                best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
                val_c = harrell_c(val[2], val[1], _risk_from_outputs(val_out, config.loss).cpu().numpy())
                report.best_epoch, report.best_val_loss = epoch, val_loss
                report.best_val_c = None if np.isnan(val_c) else float(val_c)
            else:
                stale += 1
                if stale >= config.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        report.best_epoch = report.epochs_run
    model.eval()
    return model, report


# ---------------------------------------------------------------------------------------------- CoxPH
def fit_coxph_baseline(
    x_train: np.ndarray,
    time_train: np.ndarray,
    event_train: np.ndarray,
    x_test: np.ndarray,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    l1_ratio: float = 0.5,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Elastic-net CoxPH (sksurv Coxnet) on standardised features; penalty chosen on the inner validation
    rows, then refit on all training rows. Returns test risks [P_test] and a dict of what was chosen."""
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    def coxnet(alphas: np.ndarray | None = None) -> CoxnetSurvivalAnalysis:
        return CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alpha_min_ratio=0.05, n_alphas=30, alphas=alphas)

    def fit(rows: np.ndarray, alphas: np.ndarray | None = None) -> tuple[StandardScaler, Any]:
        scaler = StandardScaler().fit(x_train[rows])
        y = Surv.from_arrays(event_train[rows].astype(bool), time_train[rows])
        with warnings.catch_warnings():
            # The largest penalties of a path zero every coefficient by design.
            warnings.filterwarnings("ignore", message="all coefficients are zero", category=UserWarning)
            return scaler, coxnet(alphas).fit(scaler.transform(x_train[rows]), y)

    try:
        if len(val_rows):
            scaler, path_model = fit(fit_rows)
            x_val = scaler.transform(x_train[val_rows])
            scores = [
                harrell_c(event_train[val_rows], time_train[val_rows], path_model.predict(x_val, alpha=a))
                for a in path_model.alphas_
            ]
            best = int(np.nanargmax(scores)) if not np.all(np.isnan(scores)) else len(scores) // 2
            alphas = path_model.alphas_
        else:
            _, path_model = fit(np.arange(len(x_train)))
            alphas, best = path_model.alphas_, len(path_model.alphas_) // 2
        scaler, model = fit(np.arange(len(x_train)), alphas)
        risk = model.predict(scaler.transform(x_test), alpha=alphas[best])
        info = {
            "alpha": float(alphas[best]), "l1_ratio": l1_ratio, "selected_on_validation": bool(len(val_rows))
        }
    except ArithmeticError as exc:
        log.warning("CoxPH baseline failed to converge (%s): constant risk for this fold", exc)
        risk = np.zeros(len(x_test))
        info = {"alpha": None, "l1_ratio": l1_ratio, "error": str(exc)}
    return np.asarray(risk, dtype=np.float64), info


# ---------------------------------------------------------------------------------------------- CV
@dataclass
class SurvivalCV:
    """Out-of-fold results of a cross-validated survival evaluation."""

    patients: pd.DataFrame
    fold_c: dict[str, list[float]]
    fold_uno: dict[str, list[float]]
    folds: list[dict[str, Any]]
    attention: dict[str, np.ndarray]

    def summary(self, model: str) -> dict[str, Any]:
        """{"c_index": {"mean", "std", "folds"}, "uno_c": {...}} of one model."""
        def stats(values: list[float]) -> dict[str, Any]:
            arr = np.asarray(values, dtype=np.float64)
            ok = arr[~np.isnan(arr)]
            return {
                "mean": float(ok.mean()) if ok.size else None,
                "std": float(ok.std()) if ok.size else None,
                "folds": [None if np.isnan(v) else float(v) for v in arr],
            }

        return {"c_index": stats(self.fold_c[model]), "uno_c": stats(self.fold_uno[model])}


def cross_validate_survival(
    bags: Mapping[str, np.ndarray],
    patients: pd.DataFrame,
    config: SurvivalConfig,
    *,
    attention_for: Collection[str] = (),
    progress: Progress | None = None,
) -> SurvivalCV:
    """Patient-level k-fold CV of ABMIL and the CoxPH baseline on the same folds.

    `patients` has patient_id, time, event (and optional site); `bags[patient_id]` is [N_i, dim].
    Out-of-fold attention [N_i] is returned for the patients in `attention_for`.
    """
    device = resolve_device(config.device)
    ids = patients["patient_id"].astype(str).tolist()
    time = patients["time"].to_numpy(np.float64)
    event = patients["event"].to_numpy(np.int64)
    site = patients["site"].to_numpy() if "site" in patients.columns else None
    empty = [p for p in ids if len(bags[p]) == 0]
    if empty:
        raise DataError(f"patient(s) {_listing(empty)} have no tiles in the store; re-extract their slides")
    folds = patient_folds(event, site, config.folds, config.seed)
    pooled = mean_pool(bags, ids)
    risk = {m: np.full(len(ids), np.nan) for m in MODELS}
    fold_of = np.full(len(ids), -1, dtype=np.int64)
    fold_c: dict[str, list[float]] = {m: [] for m in MODELS}
    fold_uno: dict[str, list[float]] = {m: [] for m in MODELS}
    fold_info, attention = [], {}
    wanted = set(attention_for)
    for fold in folds:
        if progress is not None:
            progress(f"fold {fold.index + 1}/{len(folds)}", fold.index)
        tr, te = fold.train, fold.test
        fit_rows, val_rows = inner_split(event[tr], config.val_fraction, config.seed + fold.index)
        fit_idx, val_idx = tr[fit_rows], tr[val_rows]
        edges = time_bin_edges(time[tr], event[tr], config.n_bins) if config.loss == "nll" else None
        val = None
        if len(val_idx):
            val = ([bags[ids[i]] for i in val_idx], time[val_idx], event[val_idx])
        model, report = train_abmil(
            [bags[ids[i]] for i in fit_idx], time[fit_idx], event[fit_idx], config,
            val=val, bin_edges=edges, seed=config.seed * 1000 + fold.index, device=device,
        )
        test_risk, test_attention = predict_abmil(model, [bags[ids[i]] for i in te], config.loss, device)
        risk["abmil"][te] = test_risk
        for i, att in zip(te, test_attention, strict=True):
            if ids[i] in wanted:
                attention[ids[i]] = att
        risk["coxph"][te], cox_info = fit_coxph_baseline(
            pooled[tr], time[tr], event[tr], pooled[te], fit_rows, val_rows, config.l1_ratio
        )
        fold_of[te] = fold.index
        for m in MODELS:
            fold_c[m].append(harrell_c(event[te], time[te], risk[m][te]))
            fold_uno[m].append(uno_c(event[tr], time[tr], event[te], time[te], risk[m][te]))
        fold_info.append({
            "fold": fold.index, "n_train": len(tr), "n_fit": len(fit_idx), "n_val": len(val_idx),
            "n_test": len(te), "test_events": int(event[te].sum()), "epochs_run": report.epochs_run,
            "best_epoch": report.best_epoch, "best_val_loss": report.best_val_loss,
            "best_val_c": report.best_val_c, "coxph": cox_info,
        })
        log.info("fold %d: C abmil %.3f coxph %.3f", fold.index, fold_c["abmil"][-1], fold_c["coxph"][-1])
    frame = patients.copy().reset_index(drop=True)
    frame["fold"] = fold_of
    for m in MODELS:
        frame[f"risk_{m}"] = risk[m]
    return SurvivalCV(frame, fold_c, fold_uno, fold_info, attention)


# ---------------------------------------------------------------------------------------------- run
def _heatmap_source(store: EmbeddingStore, cohort: Cohort, slide_id: str) -> tuple[str, Path, float | None]:
    """(patient_id, slide path, slide mpp) of a --heatmap slide; errors before any training is done."""
    match = cohort.slides.loc[cohort.slides["slide_id"] == slide_id, "patient_id"]
    if match.empty:
        raise UsageError(
            f"--heatmap {slide_id}: not a slide of the cohort (after skipping); pick one of its slides"
        )
    row = store.slides().set_index("slide_id").loc[slide_id]
    if row.get("path") is None or pd.isna(row["path"]):
        raise SlideError(
            f"--heatmap {slide_id}: store {store.uri} records no file path for it; drop --heatmap"
        )
    path = Path(str(row["path"]))
    if not path.exists():
        raise SlideError(
            f"--heatmap {slide_id}: slide file {path} is gone; restore it at that path or drop --heatmap"
        )
    mpp = None if pd.isna(row.get("mpp")) else float(row["mpp"])
    return str(match.iloc[0]), path, mpp


def _draw_heatmap(
    out: Path, bags: StoreBags, slide_id: str, patient_id: str, path: Path, mpp: float | None,
    attention: np.ndarray, risk: float,
) -> Path:
    start, stop = bags.slide_span(patient_id, slide_id)
    tiles = bags.store.slide_tiles(slide_id)
    weights = attention[start:stop]
    with open_slide(path, mpp=mpp) as slide:
        footprint = tiles["tile_px"].to_numpy(np.float64) * tiles["mpp"].to_numpy(np.float64) / slide.mpp
        thumbnail = slide.thumbnail(1024)
        target = out / f"heatmap_{slide_id}.png"
        plot_attention_heatmap(
            target, thumbnail, slide.dimensions, tiles[["x", "y"]].to_numpy(np.int64), footprint, weights,
            title=f"{slide_id} (patient {patient_id}, out-of-fold ABMIL risk {risk:.3g})",
        )
    return target


def run_survival(
    cohort_csv: Path,
    store_uri: str | Path,
    config: SurvivalConfig,
    out: Path,
    *,
    skip_missing: bool = False,
    heatmap: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """`mvh eval survival`: validate the cohort, cross-validate ABMIL and CoxPH, write results.json + PNGs."""
    store = EmbeddingStore.open(store_uri)
    cohort = read_cohort(cohort_csv, store.slide_ids(), skip_missing=skip_missing)
    heat = _heatmap_source(store, cohort, heatmap) if heatmap else None
    bags = StoreBags(store, cohort.slides_by_patient())
    cv = cross_validate_survival(
        bags, cohort.patients, config, attention_for=[heat[0]] if heat else (), progress=progress
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t, e = cv.patients["time"].to_numpy(), cv.patients["event"].to_numpy()
    figures: dict[str, str] = {}
    models: dict[str, Any] = {}
    for m in MODELS:
        km_path = out / f"km_{m}.png"
        p_value = plot_km(km_path, t, e, cv.patients[f"risk_{m}"].to_numpy(), title=f"{m}: out-of-fold risk")
        figures[f"km_{m}"] = str(km_path)
        models[m] = {**cv.summary(m), "logrank_p": None if np.isnan(p_value) else p_value}
    if heat is not None:
        patient_id, path, mpp = heat
        row = cv.patients.index[cv.patients["patient_id"] == patient_id][0]
        figures["heatmap"] = str(_draw_heatmap(
            out, bags, heatmap, patient_id, path, mpp, cv.attention[patient_id],
            float(cv.patients.at[row, "risk_abmil"]),
        ))
    settings = {
        **asdict(config), "device": str(resolve_device(config.device)), "cohort": str(cohort_csv),
        "store": str(store.uri), "fingerprint": store.fingerprint.to_dict(),
        "n_patients": len(cohort.patients), "n_slides": len(cohort.slides),
        "n_events": int(cohort.patients["event"].sum()), "skip_missing": skip_missing,
        "skipped_slides": list(cohort.skipped_slides), "dropped_patients": list(cohort.dropped_patients),
        "heatmap": heatmap, "c_index": "Harrell (sksurv ties), per test fold; std ddof=0",
    }
    patients = [
        {"patient_id": r.patient_id, "time": float(r.time), "event": int(r.event), "fold": int(r.fold),
         "risk": {m: float(getattr(r, f"risk_{m}")) for m in MODELS}}
        for r in cv.patients.itertuples(index=False)
    ]
    results = {"settings": settings, "patients": patients, **models, "folds": cv.folds, "figures": figures}
    results_path = out / "results.json"
    results_path.write_text(json.dumps(results, indent=2))
    results["results_path"] = str(results_path)
    return results
