"""ST evaluation on arrays: folds per split, per-fold fits and metrics, summaries and the drop.

Definitions (docs/evaluations.md): per fold, Pearson r of each gene over the pooled test spots; PCC, PCC-10,
MAE, MSE; mean +- population std (ddof = 0) over folds; `drop = 1 - PCC_loso / PCC_random`. With HEST's
regressor (the default) every number is HEST-Benchmark's `predict_folds`: r by `scipy.stats.pearsonr`, fold
PCC = `np.mean` over genes and PCC = `np.mean` over folds, so a gene constant in a test fold (r NaN, named
in the notes and `nan_genes_per_fold`) makes its fold's PCC and the mean NaN, as in HEST. The named
alternatives average the genes that have an r and the folds that have a PCC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import sklearn

from mvh.errors import DataError, UsageError
from mvh.progress import FOLDS, Event, Progress, report
from mvh.tasks.metrics import metric_summary, pearson_per_gene, regression_metrics, top_k_mean
from mvh.tasks.splits import SPLITS, Fold, st_folds
from mvh.tasks.st_model import (
    REGRESSORS,
    follows_hest,
    hest_pearson,
    log1p_counts,
    make_regressor,
    pca_solver,
    select_hvg,
    targets,
)
from mvh.tasks.st_result import FoldInfo, ModelResult, SplitMetrics, STSettings

ST_SPLITS = (*SPLITS, "hest-bench")
DEFAULT_PATIENT_FOLDS = 5
DEFAULT_RANDOM_FOLDS = 5
LEVELS = {
    "random": "spot-level k-fold (spots of one sample/patient in several folds; the paper's reference)",
    "patient": "patient-level k-fold (all spots of a patient in one fold; HEST's protocol)",
    "loso": "study-level: leave-one-study-out",
    "hest-bench": "HEST-Benchmark's fixed splits (splits/train_i.csv, test_i.csv)",
}



def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


@dataclass(frozen=True)
class STProtocol:
    """What `evaluate_st` computes on arrays: splits, folds, seed, targets and regressor (validated here).

    `folds=None` means min(5, patients) for patient and 5 for random; `genes=None` means the top
    `top_genes` HVGs of each fold's training spots; `seed` (HEST's default 1) drives the folds and PCA.
    """

    splits: tuple[str, ...] = ("patient",)
    folds: int | None = None
    seed: int = 1
    genes: tuple[str, ...] | None = None
    top_genes: int = 50
    regressor: str = "ridge"
    pca: bool = True
    n_components: int = 256
    group_by_sample: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", tuple(self.splits))
        if self.genes is not None:
            object.__setattr__(self, "genes", tuple(self.genes))
        for s in self.splits:
            _check(s in ST_SPLITS, f"--split/--compare {s!r} is unknown; use one of {', '.join(SPLITS)}")
        _check(len(self.splits) > 0, "no split given; use one of " + ", ".join(SPLITS))
        _check(len(set(self.splits)) == len(self.splits),
               f"--compare {','.join(self.splits)} names a split twice")
        _check(self.folds is None or self.folds >= 2, f"--folds {self.folds}: needs at least 2 folds")
        _check(self.top_genes >= 1, f"--top-genes {self.top_genes}: must be at least 1")
        _check(self.n_components >= 1, f"n_components {self.n_components}: must be at least 1")
        _check(self.regressor in REGRESSORS,
               f"--regressor {self.regressor!r} is unknown; use one of {', '.join(REGRESSORS)}")
        if self.genes is not None:
            _check(len(self.genes) > 0, "the gene list is empty; give at least one gene")
            _check(len(set(self.genes)) == len(self.genes), "a gene is listed twice; list each once")

    @property
    def hest(self) -> bool:
        """Whether the regressor is HEST's, so targets, predictions and NaN rules are HEST's too."""
        return follows_hest(self.regressor)


@dataclass
class SplitResult:
    """Per-fold metrics of one model on one split, with the per-gene r and PCA solver of each fold."""

    pcc: list[float] = field(default_factory=list)
    pcc10: list[float] = field(default_factory=list)
    mae: list[float] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    fold_genes: list[dict[str, float]] = field(default_factory=list)
    solvers: list[str | None] = field(default_factory=list)

    def summary(self, split: str, hest: bool) -> SplitMetrics:
        """The results entry: summaries, per-gene r (fold mean), NaN genes named per fold."""
        per_gene: dict[str, list[float]] = {}
        for genes in self.fold_genes:
            for g, r in genes.items():
                per_gene.setdefault(g, []).append(r)
        gene_pcc = {}
        for g in sorted(per_gene):
            vals = np.asarray(per_gene[g], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            # HEST's merge_fold_results: np.mean over folds (NaN if any fold is NaN).
            mean = float(finite.mean()) if len(finite) else np.nan
            gene_pcc[g] = float(vals.mean()) if hest else mean
        nan_genes = [sorted(g for g, r in genes.items() if not np.isfinite(r)) for genes in self.fold_genes]
        return SplitMetrics(
            level=LEVELS[split],
            pcc=metric_summary(self.pcc, propagate_nan=hest),
            pcc10=metric_summary(self.pcc10),
            mae=metric_summary(self.mae),
            mse=metric_summary(self.mse),
            genes=gene_pcc,
            genes_per_fold=self.fold_genes,
            nan_genes_per_fold=nan_genes,
            n_nan_genes=sum(len(g) for g in nan_genes),
            pca_solver_per_fold=self.solvers,
        )


@dataclass
class STEvaluation:
    """`evaluate_st`'s answer: the settings as run, one result per model, and notes."""

    settings: STSettings
    models: dict[str, ModelResult]
    notes: list[str]


@dataclass
class HeldOut:
    """Measured and predicted expression of one held-out sample (fold 0), with its own per-gene r."""

    model: str
    split: str
    sample_id: str
    genes: list[str]
    xy: np.ndarray
    measured: np.ndarray
    predicted: np.ndarray
    gene_pcc: np.ndarray


def fold_targets(
    expr: np.ndarray | sp.spmatrix, all_genes: Sequence[str], fold: Fold, config: STProtocol
) -> np.ndarray:
    """Gene column indices for one fold: the fixed list, or HVGs of the fold's training spots."""
    if config.genes is not None:
        index = {g: i for i, g in enumerate(all_genes)}
        missing = [g for g in config.genes if g not in index]
        if missing:
            raise DataError(f"genes not in the expression data: {', '.join(missing[:5])}; fix the genes file")
        return np.asarray([index[g] for g in config.genes], dtype=np.int64)
    cols = select_hvg(expr, fold.train, config.top_genes)
    if len(cols) == 0:
        raise DataError("no gene varies over the training spots; check the counts in the .h5ad files")
    return cols


def evaluate_fold(
    X: np.ndarray, expr: np.ndarray | sp.spmatrix, counts: np.ndarray | sp.spmatrix, cols: np.ndarray,
    fold: Fold, config: STProtocol,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Fit on the fold's training spots, predict its test spots -> (metrics, y_test, y_pred).

    `expr` is `log1p_counts(counts)` [N, G]; `cols` are the fold's target genes. The metrics carry the PCA
    solver scikit-learn used ("pca_solver").
    """
    y_train = targets(expr, counts, fold.train, cols, config.hest)
    y_test = targets(expr, counts, fold.test, cols, config.hest)
    model = make_regressor(config.regressor, pca=config.pca, n_components=config.n_components,
                           seed=config.seed)
    model.fit(X[fold.train], y_train)
    y_pred = model.predict(X[fold.test])
    if not config.hest:
        metrics = regression_metrics(y_test, y_pred.astype(np.float32))
        return {**metrics, "pca_solver": pca_solver(model)}, y_test, y_pred.astype(np.float32)
    r = hest_pearson(y_test, y_pred)
    err = np.asarray(y_pred, dtype=np.float64) - y_test
    metrics = {"pcc": float(np.mean(r)), "pcc10": top_k_mean(r), "mae": float(np.abs(err).mean()),
               "mse": float((err * err).mean()), "per_gene": r, "pca_solver": pca_solver(model)}
    return metrics, y_test, y_pred


def make_st_folds(
    spots: pd.DataFrame, config: STProtocol, split: str, fixed: list[Fold] | None = None
) -> tuple[list[Fold], str]:
    """Folds for `spots` (columns sample_id, patient, study) under `split`, and a line saying which."""
    for col in ("sample_id", "patient", "study"):
        if col not in spots.columns:
            raise DataError(f"spot table lacks column {col!r}; give it in the --meta CSV")
    if split == "hest-bench":
        if fixed is None:
            raise UsageError("--split hest-bench needs a HEST-Benchmark task folder as input")
        return fixed, f"hest-bench: the task's {len(fixed)} fixed splits"
    k = config.folds
    if split == "patient":
        n_patients = int(spots["patient"].nunique())
        if n_patients < 2:
            raise DataError(f"--split patient needs at least 2 patients, found {n_patients}; give them in "
                            "--meta or use --split random")
        k = k or min(DEFAULT_PATIENT_FOLDS, n_patients)
        how = (f"patient: {k}-fold grouped by patient over {n_patients} patients"
               + (" (leave-one-patient-out)" if k == n_patients else ""))
    elif split == "random":
        k = k or DEFAULT_RANDOM_FOLDS
        how = (f"random: {k}-fold over samples (grouped by sample)" if config.group_by_sample
               else f"random: {k}-fold over spots (spot-level)")
    else:
        how = f"loso: leave-one-study-out over {spots['study'].nunique()} studies"
    folds = st_folds(split, samples=spots["sample_id"].to_numpy(), patients=spots["patient"].to_numpy(),
                     studies=spots["study"].to_numpy(), k=k or 2, seed=config.seed,
                     group_by_sample=config.group_by_sample)
    return folds, how


def evaluate_st(
    embeddings: dict[str, np.ndarray],
    counts: np.ndarray | sp.spmatrix,
    genes: Sequence[str],
    spots: pd.DataFrame,
    protocol: STProtocol,
    progress: Progress | None = None,
    fixed_folds: list[Fold] | None = None,
) -> tuple[STEvaluation, list[HeldOut]]:
    """Evaluate each model's spot embeddings [N, D] against counts [N, G] on the same folds per split.

    Returns the evaluation and, per model and split, the held-out sample of fold 0 for the spatial figure.
    """
    n = len(spots)
    if counts.shape[0] != n or counts.shape[1] != len(genes):
        raise DataError(f"counts {counts.shape} do not match {n} spots x {len(genes)} genes")
    for name, X in embeddings.items():
        if X.shape[0] != n:
            raise DataError(f"model {name}: {X.shape[0]} embeddings for {n} spots; re-run the embedding step")
        if not np.isfinite(X).all():
            raise DataError(f"model {name}: embeddings hold NaN or inf; run `mvh verify` on its store")
    genes = list(genes)
    expr = log1p_counts(counts)
    splits = list(protocol.splits)
    settings = STSettings(
        split=splits[0], splits=splits, levels={s: LEVELS[s] for s in splits}, folds=protocol.folds,
        seed=protocol.seed, genes=None if protocol.genes is None else list(protocol.genes),
        top_genes=protocol.top_genes, regressor=protocol.regressor, pca=protocol.pca,
        n_components=protocol.n_components, group_by_sample=protocol.group_by_sample,
        sklearn_version=sklearn.__version__, n_spots=n, n_samples=int(spots["sample_id"].nunique()),
        n_patients=int(spots["patient"].nunique()), folds_by_split={}, how_by_split={},
    )
    models = {name: ModelResult() for name in embeddings}
    held: list[HeldOut] = []
    notes: list[str] = []
    for split in splits:
        folds, how = make_st_folds(spots, protocol, split, fixed_folds)
        settings.how_by_split[split] = how
        notes.append(f"split {how}")
        fold_cols = [fold_targets(expr, genes, f, protocol) for f in folds]
        settings.folds_by_split[split] = [
            FoldInfo(f.name, len(f.train), len(f.test),
                     sorted(spots["sample_id"].iloc[f.test].unique().tolist()), [genes[c] for c in cols])
            for f, cols in zip(folds, fold_cols, strict=True)
        ]
        report(progress, Event.TOTAL, FOLDS, len(folds) * len(embeddings))
        for name, X in embeddings.items():
            res = SplitResult()
            for fold, cols in zip(folds, fold_cols, strict=True):
                report(progress, Event.STATUS, FOLDS, 0, f"{name} {split} {fold.name}")
                m, y_test, y_pred = evaluate_fold(X, expr, counts, cols, fold, protocol)
                res.pcc.append(m["pcc"])
                res.pcc10.append(m["pcc10"])
                res.mae.append(m["mae"])
                res.mse.append(m["mse"])
                res.solvers.append(m["pca_solver"])
                res.fold_genes.append({genes[c]: float(r) for c, r in zip(cols, m["per_gene"], strict=True)})
                if fold.index == 0:
                    held.append(_held_out(name, split, spots, fold, [genes[c] for c in cols], y_test, y_pred))
                report(progress, Event.ADVANCE, FOLDS, 1)
            summary = res.summary(split, protocol.hest)
            models[name].splits[split] = summary
            flat = [f"{g} ({f.name})" for f, names in zip(folds, summary.nan_genes_per_fold, strict=True)
                    for g in names]
            if flat:
                effect = ("its fold's PCC and the mean are NaN, as HEST's np.mean" if protocol.hest
                          else "left out of its fold's PCC")
                more = " ..." if len(flat) > 8 else ""
                notes.append(f"{name}, {split}: {len(flat)} gene(s) constant in a test fold have no r (NaN, "
                             f"kept in the JSON; {effect}): {', '.join(flat[:8])}{more}")
    if "random" in splits and "loso" in splits:
        for result in models.values():
            result.drop = robustness_drop(result.splits["random"].pcc.mean, result.splits["loso"].pcc.mean)
    return STEvaluation(settings, models, notes), held


def robustness_drop(pcc_random: float, pcc_loso: float) -> float:
    """The paper's relative drop `1 - PCC_loso / PCC_random` (NaN when random PCC is not positive)."""
    if not np.isfinite(pcc_random) or pcc_random <= 0:
        return float("nan")
    return float(1.0 - pcc_loso / pcc_random)


def _held_out(
    model: str, split: str, spots: pd.DataFrame, fold: Fold, genes: list[str],
    y_test: np.ndarray, y_pred: np.ndarray,
) -> HeldOut:
    test_samples = spots["sample_id"].to_numpy()[fold.test]
    ids, counts = np.unique(test_samples, return_counts=True)
    sample = str(ids[np.argmax(counts)])
    keep = test_samples == sample
    if {"x", "y"} <= set(spots.columns):
        xy = spots[["x", "y"]].to_numpy(np.float64)[fold.test][keep]
    else:
        xy = np.zeros((int(keep.sum()), 2))
    # r over this sample's spots (the figure shows this sample), not over the whole fold.
    sample_r = pearson_per_gene(y_test[keep], y_pred[keep])
    return HeldOut(model, split, sample, genes, xy, y_test[keep], y_pred[keep], sample_r)


def table_rows(models: dict[str, ModelResult]) -> list[dict[str, Any]]:
    """One row per model (the paper's table): per split PCC mean/std, PCC-10, MAE, MSE, NaN genes; drop."""
    rows = []
    for model, result in models.items():
        row: dict[str, Any] = {"model": model}
        for split, res in result.splits.items():
            row[split] = {
                "pcc_mean": res.pcc.mean, "pcc_std": res.pcc.std,
                "pcc10_mean": res.pcc10.mean, "pcc10_std": res.pcc10.std,
                "mae_mean": res.mae.mean, "mse_mean": res.mse.mean, "n_nan_genes": res.n_nan_genes,
            }
        row["drop"] = result.drop
        rows.append(row)
    return rows
