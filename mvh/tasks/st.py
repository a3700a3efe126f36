"""Spatial-transcriptomics gene-expression regression from frozen spot embeddings (HEST protocol).

Targets are `log1p(raw counts)` of a fixed gene list, or of the top-k highly variable genes chosen on the
TRAINING spots of each fold only. The default regressor is the HEST benchmark's: StandardScaler ->
PCA(256) -> Ridge(alpha = 100 / (n_features * n_genes), no intercept), everything fit on the training
split. Metrics (per-gene Pearson over pooled test spots, PCC-10, MAE, MSE) are computed per fold and
summarised as mean +- std; evaluating both `random` and `loso` adds the relative drop
`1 - PCC_loso / PCC_random`. `evaluate_st` works on arrays; `run_st` is the whole `mvh eval st` job
(samples -> stores -> evaluation -> results.json + figures).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mvh.errors import DataError, UsageError
from mvh.tasks.metrics import jsonable, pearson_per_gene, regression_metrics, summarize
from mvh.tasks.splits import SPLITS, Fold, st_folds

if TYPE_CHECKING:
    from mvh.tasks.stores import StoreSpec

REGRESSORS = ("ridge", "ridge-cv", "knn")
Progress = Callable[[str, int], None]


class HestRidge(RegressorMixin, BaseEstimator):
    """HEST-benchmark ridge: no intercept, alpha = `scale / (n_features * n_targets)` of its training data.

    The features reaching it are standardised on the training split, so their columns have mean zero and
    the coefficients do not depend on the targets' means: they are exactly HEST's. HEST's raw predictions
    are centred near zero, which leaves PCC unchanged but makes MAE/MSE meaningless, so `predict` adds
    the training targets' mean back (equal to the intercept an intercept-fitting ridge would find).
    """

    def __init__(self, scale: float = 100.0):
        self.scale = scale

    def fit(self, X: np.ndarray, y: np.ndarray) -> HestRidge:
        """Fit on X [N, F] and y [N, G]."""
        n_targets = 1 if y.ndim == 1 else y.shape[1]
        self.alpha_ = self.scale / (X.shape[1] * n_targets)
        self.ridge_ = Ridge(alpha=self.alpha_, fit_intercept=False).fit(X, y)
        self.y_mean_ = np.asarray(y, dtype=np.float64).mean(axis=0)
        self.x_mean_ = np.asarray(X, dtype=np.float64).mean(axis=0)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions [N, G]."""
        return self.ridge_.predict(X - self.x_mean_) + self.y_mean_


def make_regressor(
    kind: str = "ridge", *, pca: bool = True, n_components: int = 256, seed: int = 0
) -> Pipeline:
    """StandardScaler -> [PCA(n_components)] -> regressor, all fit on the training split only."""
    if kind == "ridge":
        head: BaseEstimator = HestRidge()
    elif kind == "ridge-cv":
        head = RidgeCV(alphas=np.logspace(-3, 4, 15))
    elif kind == "knn":
        head = KNeighborsRegressor(n_neighbors=20, weights="distance")
    else:
        raise UsageError(f"--regressor {kind!r} is unknown; use one of {', '.join(REGRESSORS)}")
    steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
    if pca:
        steps.append(("pca", _Pca(n_components, seed)))
    steps.append(("head", head))
    return Pipeline(steps)


class _Pca(BaseEstimator):
    """PCA capped at the rank the training split allows (fewer spots or dims than components)."""

    def __init__(self, n_components: int = 256, seed: int = 0):
        self.n_components = n_components
        self.seed = seed

    def fit(self, X: np.ndarray, y: Any = None) -> _Pca:
        n = min(self.n_components, X.shape[0], X.shape[1])
        # The covariance eigendecomposition is exact and fastest when spots >> dims (the ST case).
        solver = "covariance_eigh" if X.shape[0] >= 2 * X.shape[1] else "full"
        self.pca_ = PCA(n_components=n, svd_solver=solver, random_state=self.seed).fit(X)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return self.pca_.transform(X)

    def fit_transform(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        return self.fit(X).transform(X)


def log1p_counts(counts: np.ndarray | sp.spmatrix) -> np.ndarray | sp.csr_matrix:
    """`log1p` of raw counts [N, G] as float32, kept sparse (CSR) when the input is sparse."""
    if sp.issparse(counts):
        out = sp.csr_matrix(counts, dtype=np.float32, copy=True)
        out.data = np.log1p(out.data)
        return out
    return np.log1p(np.asarray(counts, dtype=np.float32))


def dense_rows(expr: np.ndarray | sp.spmatrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Rows x columns of an expression matrix as dense float32."""
    sub = expr[rows][:, cols]
    return np.asarray(sub.toarray() if sp.issparse(sub) else sub, dtype=np.float32)


def gene_variances(expr: np.ndarray | sp.spmatrix, rows: np.ndarray) -> np.ndarray:
    """Variance per gene [G] (float64) of an expression matrix (already log1p) over `rows` only."""
    from sklearn.utils.sparsefuncs import mean_variance_axis

    sub = expr[rows]
    if sp.issparse(sub):
        return np.asarray(mean_variance_axis(sp.csr_matrix(sub), axis=0)[1], dtype=np.float64)
    return np.asarray(sub, dtype=np.float64).var(axis=0)


def select_hvg(expr: np.ndarray | sp.spmatrix, rows: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the top-k genes by variance of log1p expression over `rows` (ties: lower index).

    `expr` is `log1p_counts(counts)`; only `rows` (the training spots) are read.
    """
    var = gene_variances(expr, rows)
    order = np.argsort(-var, kind="stable")
    order = order[var[order] > 0]
    return np.sort(order[:k])


@dataclass
class STConfig:
    """Settings of one ST evaluation (saved with its results)."""

    split: str = "random"
    folds: int = 10
    seed: int = 0
    genes: list[str] | None = None
    top_genes: int = 50
    regressor: str = "ridge"
    pca: bool = True
    n_components: int = 256
    group_by_sample: bool = False


@dataclass
class SplitResult:
    """Per-fold metrics of one model on one split, with the per-gene r of each fold."""

    pcc: list[float] = field(default_factory=list)
    pcc10: list[float] = field(default_factory=list)
    mae: list[float] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    fold_genes: list[dict[str, float]] = field(default_factory=list)
    nan_genes: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The results-JSON entry: pcc/pcc10/mae/mse summaries and the fold-averaged r of each gene."""
        per_gene: dict[str, list[float]] = {}
        for genes in self.fold_genes:
            for g, r in genes.items():
                per_gene.setdefault(g, []).append(r)
        gene_pcc = {}
        for g in sorted(per_gene):
            vals = np.asarray(per_gene[g], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            gene_pcc[g] = float(finite.mean()) if len(finite) else float("nan")
        return {
            "pcc": summarize(self.pcc),
            "pcc10": summarize(self.pcc10),
            "mae": summarize(self.mae),
            "mse": summarize(self.mse),
            "genes": gene_pcc,
            "genes_per_fold": self.fold_genes,
            "nan_genes_per_fold": self.nan_genes,
        }


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
    expr: np.ndarray | sp.spmatrix, all_genes: Sequence[str], fold: Fold, config: STConfig
) -> np.ndarray:
    """Gene column indices for one fold: the fixed list, or HVGs of the fold's training spots."""
    if config.genes is not None:
        index = {g: i for i, g in enumerate(all_genes)}
        missing = [g for g in config.genes if g not in index]
        if missing:
            raise DataError(f"genes not in the expression data: {', '.join(missing[:5])}; fix the genes file")
        return np.asarray([index[g] for g in config.genes], dtype=np.int64)
    if config.top_genes < 1:
        raise UsageError(f"--top-genes {config.top_genes}: must be at least 1")
    cols = select_hvg(expr, fold.train, config.top_genes)
    if len(cols) == 0:
        raise DataError("no gene varies over the training spots; check the counts in the .h5ad files")
    return cols


def evaluate_fold(
    X: np.ndarray, expr: np.ndarray | sp.spmatrix, cols: np.ndarray, fold: Fold, config: STConfig
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Fit on the fold's training spots, predict its test spots -> (metrics, y_test, y_pred).

    `expr` is `log1p_counts(counts)` [N, G]; `cols` are the fold's target genes.
    """
    y_train = dense_rows(expr, fold.train, cols)
    y_test = dense_rows(expr, fold.test, cols)
    model = make_regressor(config.regressor, pca=config.pca, n_components=config.n_components,
                           seed=config.seed)
    model.fit(X[fold.train], y_train)
    y_pred = model.predict(X[fold.test]).astype(np.float32)
    return regression_metrics(y_test, y_pred), y_test, y_pred


def make_st_folds(spots: pd.DataFrame, config: STConfig, split: str | None = None) -> list[Fold]:
    """Folds for `spots` (columns sample_id, patient, study) under `split` (default config.split)."""
    split = split or config.split
    for col in ("sample_id", "patient", "study"):
        if col not in spots.columns:
            raise DataError(f"spot table lacks column {col!r}; give it in the --meta CSV")
    return st_folds(
        split,
        samples=spots["sample_id"].to_numpy(),
        patients=spots["patient"].to_numpy(),
        studies=spots["study"].to_numpy(),
        k=config.folds,
        seed=config.seed,
        group_by_sample=config.group_by_sample,
    )


def evaluate_st(
    embeddings: dict[str, np.ndarray],
    counts: np.ndarray | sp.spmatrix,
    genes: Sequence[str],
    spots: pd.DataFrame,
    config: STConfig,
    splits: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], list[HeldOut]]:
    """Evaluate each model's spot embeddings [N, D] against counts [N, G] on the same folds per split.

    Returns the results JSON object (`{"settings", "models": {model: {split: {...}, "drop"?}}}`) and,
    per model and split, the held-out sample of fold 0 for the spatial figure.
    """
    splits = list(splits or [config.split])
    for s in splits:
        if s not in SPLITS:
            raise UsageError(f"split {s!r} is unknown; use one of {', '.join(SPLITS)}")
    n = len(spots)
    if counts.shape[0] != n or counts.shape[1] != len(genes):
        raise DataError(f"counts {counts.shape} do not match {n} spots x {len(genes)} genes")
    for name, X in embeddings.items():
        if X.shape[0] != n:
            raise DataError(f"model {name}: {X.shape[0]} embeddings for {n} spots; re-run the embedding step")
    genes = list(genes)
    expr = log1p_counts(counts)
    settings: dict[str, Any] = {**asdict(config), "splits": splits, "n_spots": n,
                                "n_samples": int(spots["sample_id"].nunique()), "folds_by_split": {}}
    models: dict[str, dict[str, Any]] = {name: {} for name in embeddings}
    held: list[HeldOut] = []
    for split in splits:
        folds = make_st_folds(spots, config, split)
        fold_cols = [fold_targets(expr, genes, f, config) for f in folds]
        settings["folds_by_split"][split] = [
            {"name": f.name, "n_train": len(f.train), "n_test": len(f.test),
             "test_samples": sorted(spots["sample_id"].iloc[f.test].unique().tolist()),
             "genes": [genes[c] for c in cols]}
            for f, cols in zip(folds, fold_cols, strict=True)
        ]
        for name, X in embeddings.items():
            res = SplitResult()
            for fold, cols in zip(folds, fold_cols, strict=True):
                m, y_test, y_pred = evaluate_fold(X, expr, cols, fold, config)
                res.pcc.append(m["pcc"])
                res.pcc10.append(m["pcc10"])
                res.mae.append(m["mae"])
                res.mse.append(m["mse"])
                res.nan_genes.append(m["n_nan_genes"])
                res.fold_genes.append({genes[c]: float(r) for c, r in zip(cols, m["per_gene"], strict=True)})
                if fold.index == 0:
                    held.append(_held_out(name, split, spots, fold, [genes[c] for c in cols], y_test, y_pred))
                if progress is not None:
                    progress(f"{name} {split} {fold.name}", 1)
            models[name][split] = res.to_dict()
    if "random" in splits and "loso" in splits:
        for name in models:
            models[name]["drop"] = robustness_drop(models[name]["random"]["pcc"]["mean"],
                                                   models[name]["loso"]["pcc"]["mean"])
    return {"settings": settings, "models": models}, held


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


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model (the paper's table): per split PCC mean/std, PCC-10, MAE, MSE; and the drop."""
    rows = []
    for model, per_split in results["models"].items():
        row: dict[str, Any] = {"model": model}
        for split, res in per_split.items():
            if split == "drop":
                continue
            row[split] = {
                "pcc_mean": res["pcc"]["mean"], "pcc_std": res["pcc"]["std"],
                "pcc10_mean": res["pcc10"]["mean"], "pcc10_std": res["pcc10"]["std"],
                "mae_mean": res["mae"]["mean"], "mse_mean": res["mse"]["mean"],
            }
        row["drop"] = per_split.get("drop")
        rows.append(row)
    return rows


def run_st(
    inputs: Sequence[str | Path],
    stores: Sequence[StoreSpec],
    config: STConfig,
    out_dir: str | Path,
    meta: str | Path | None = None,
    splits: Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The whole `mvh eval st` job: find samples, embed missing spots per store, evaluate every model on
    the same folds, write `out_dir/results.json` and the figures; return the results object."""
    from mvh.tasks.plots import plot_gene_pcc, plot_spatial_expression
    from mvh.tasks.st_data import (
        check_split_metadata,
        embed_samples,
        find_samples,
        load_expression,
        sample_thumbnail,
        spot_embeddings,
    )
    from mvh.tasks.stores import open_spec

    splits = list(splits or [config.split])
    if not stores:
        raise UsageError("no model given: pass --model NAME, --models a,b or --store PATH")
    samples = find_samples([Path(p) for p in inputs], None if meta is None else Path(meta))
    check_split_metadata(samples, splits)
    expr = load_expression(samples)
    embeddings: dict[str, np.ndarray] = {}
    keep = np.ones(len(expr.spots), dtype=bool)
    store_info = {}
    for spec in stores:
        label, store, factory = open_spec(spec, device)
        embed_samples(samples, store, factory, batch_size=batch_size, workers=workers, progress=progress)
        if label in embeddings:
            label = f"{label}@{Path(spec.uri).stem}"
        X, found = spot_embeddings(store, expr.spots)
        embeddings[label] = X
        keep &= found
        store_info[label] = {"uri": store.uri, "fingerprint": store.fingerprint.describe(),
                             "weights_sha256": store.fingerprint.weights_sha256}
    if not keep.any():
        raise DataError("no spot has an embedding in every store; check the barcodes of the patches files")
    rows = np.flatnonzero(keep)
    expr = expr.subset(rows)
    embeddings = {k: v[rows] for k, v in embeddings.items()}
    results, held = evaluate_st(embeddings, expr.counts, expr.genes, expr.spots, config, splits, progress)
    results["settings"].update(
        samples=[{"sample_id": s.sample_id, "patient": s.patient, "study": s.study} for s in samples],
        stores=store_info, n_spots_without_embedding=int((~keep).sum()),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for split in splits:
        per_model = {m: results["models"][m][split]["genes"] for m in results["models"]}
        path = out / f"gene_pcc_{split}.png"
        figures.append(plot_gene_pcc(per_model, path, f"Per-gene PCC ({split} split)"))
    by_id = {s.sample_id: s for s in samples}
    thumbs: dict[str, tuple[np.ndarray | None, float]] = {}
    for h in held:
        if h.sample_id not in thumbs:
            thumbs[h.sample_id] = sample_thumbnail(by_id[h.sample_id])
        thumb, scale = thumbs[h.sample_id]
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in h.model)
        figures.append(plot_spatial_expression(
            h.xy, h.measured, h.predicted, h.genes, h.gene_pcc, out / f"spatial_{name}_{h.split}.png",
            thumb, scale, title=f"{h.model}, {h.split} split, held-out sample {h.sample_id} (fold 0)"))
    results["figures"] = [str(p) for p in figures]
    (out / "results.json").write_text(json.dumps(jsonable(results), indent=2))
    return results
