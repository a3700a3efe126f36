"""ST regressors on arrays: HEST-Benchmark's StandardScaler -> PCA -> intercept-free ridge (the default,
exactly as HEST computes it), named alternatives, log1p targets and HVGs chosen on training spots only.

`ridge` (the default) is HEST-Benchmark's `predict_folds` estimator (mahmoodlab/HEST, `src/hest/bench/
benchmark.py` `predict_single_split` and `trainer.py` `train_test_reg`): StandardScaler -> PCA(n_components,
random_state=seed) with scikit-learn's own solver choice ("auto": covariance eigendecomposition when the
training split has >= 10x as many spots as dims <= 1000, else randomized SVD for HEST's shapes) -> features
rounded to float32 (HEST's torch.Tensor), which scikit-learn then solves in float64 -> Ridge(solver="lsqr",
max_iter=1000, random_state=seed, no intercept, alpha = 100 / (n_components * n_genes)) on float64 log1p
targets; predictions as HEST returns them (no intercept). Without PCA it is HEST's `dimreduce=None` path:
the raw float32 features, unscaled, into the same ridge.
`ridge-exact` is the named alternative: exact PCA (covariance eigendecomposition when spots >> dims, else
full SVD) and a direct ridge solve, with the training targets' mean added back to the predictions (PCC
differs from HEST's by its solvers' tolerance, ~0.01; MAE/MSE are of centred predictions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mvh.errors import DataError, UsageError

HEST_REGRESSOR = "ridge"
REGRESSORS = (HEST_REGRESSOR, "ridge-exact", "ridge-cv", "knn")


def follows_hest(regressor: str) -> bool:
    """Whether `regressor` is HEST's estimator, whose targets, predictions and NaN rules mvh then keeps."""
    return regressor == HEST_REGRESSOR


class ExactRidge(RegressorMixin, BaseEstimator):
    """HEST's ridge solved directly: no intercept, alpha = `scale / (n_features * n_targets)`.

    The features reaching it are standardised on the training split, so their columns have mean zero and
    the coefficients do not depend on the targets' means. HEST's raw predictions are centred near zero,
    which leaves PCC unchanged but makes MAE/MSE meaningless, so `predict` adds the training targets' mean
    back (equal to the intercept an intercept-fitting ridge would find).
    """

    def __init__(self, scale: float = 100.0):
        self.scale = scale

    def fit(self, X: np.ndarray, y: np.ndarray) -> ExactRidge:
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
    kind: str = HEST_REGRESSOR, *, pca: bool = True, n_components: int = 256, seed: int = 1
) -> Pipeline:
    """The regressor `kind` with its preprocessing, all fit on the training split only."""
    if follows_hest(kind):
        if not pca:
            return Pipeline([("head", HestRidge(seed, tensor_input=False))])
        return Pipeline([("scale", StandardScaler()), ("pca", HestPca(n_components, seed)),
                         ("head", HestRidge(seed))])
    if kind == "ridge-exact":
        head: BaseEstimator = ExactRidge()
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


def pca_solver(model: Pipeline) -> str | None:
    """The SVD solver the fitted pipeline's PCA used (scikit-learn's choice for "auto"), None without PCA."""
    step = model.named_steps.get("pca")
    return None if step is None else str(step.pca_._fit_svd_solver)


class _Pca(BaseEstimator):
    """PCA capped at the rank the training split allows (fewer spots or dims than components)."""

    def __init__(self, n_components: int = 256, seed: int = 1):
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


class HestPca(BaseEstimator):
    """HEST-Benchmark's PCA: `PCA(n_components, random_state=seed)` with scikit-learn's own solver choice,
    output float32 (HEST's torch.Tensor)."""

    def __init__(self, n_components: int = 256, seed: int = 1):
        self.n_components = n_components
        self.seed = seed

    def _pca(self, X: np.ndarray) -> PCA:
        if min(X.shape) < self.n_components:
            raise DataError(f"HEST's PCA({self.n_components}) needs at least {self.n_components} training "
                            f"spots and dims, got {X.shape[0]} x {X.shape[1]}; pass --no-pca or "
                            "--regressor ridge-exact (PCA capped at the rank)")
        # svd_solver left on "auto", as HEST leaves it: sklearn picks by the training split's size.
        return PCA(n_components=self.n_components, random_state=self.seed)

    def fit(self, X: np.ndarray, y: Any = None) -> HestPca:
        """Fit on the training split (DataError when it has fewer spots or dims than components)."""
        self.pca_ = self._pca(X).fit(X)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Projected features [N, n_components] as float32."""
        return np.asarray(self.pca_.transform(X), dtype=np.float32)

    def fit_transform(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        """PCA's own `fit_transform`, as HEST's Pipeline.fit_transform computes it."""
        self.pca_ = self._pca(X)
        return np.asarray(self.pca_.fit_transform(X), dtype=np.float32)


class HestRidge(RegressorMixin, BaseEstimator):
    """HEST's `train_test_reg`: Ridge(lsqr, max_iter=1000, no intercept, alpha = 100 / (F * G)).

    `tensor_input`: HEST hands scikit-learn the PCA output as a torch.Tensor, which scikit-learn converts to
    float64 for fitting; without PCA it hands the float32 array itself, which scikit-learn keeps float32.
    """

    def __init__(self, seed: int = 1, tensor_input: bool = True):
        self.seed = seed
        self.tensor_input = tensor_input

    def fit(self, X: np.ndarray, y: np.ndarray) -> HestRidge:
        """Fit on X [N, F] and y [N, G]."""
        self.alpha_ = 100 / (X.shape[1] * y.shape[1])
        X = np.asarray(X, dtype=np.float64) if self.tensor_input else np.asarray(X, dtype=np.float32)
        self.ridge_ = Ridge(solver="lsqr", alpha=self.alpha_, random_state=self.seed, fit_intercept=False,
                            max_iter=1000).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """HEST's predictions [N, G] (no intercept: centred near zero, so MAE/MSE are HEST's)."""
        return self.ridge_.predict(np.asarray(X, dtype=np.float32))


def targets(
    expr: np.ndarray | sp.spmatrix, counts: np.ndarray | sp.spmatrix, rows: np.ndarray, cols: np.ndarray,
    hest: bool,
) -> np.ndarray:
    """log1p targets [rows, cols]: float32 rows of `expr` (log1p_counts), or HEST's float64 log1p."""
    if not hest:
        return dense_rows(expr, rows, cols)
    sub = counts[rows][:, cols]
    dense = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    return np.log1p(dense.astype(np.float64))


def hest_pearson(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-gene r as HEST computes it: `scipy.stats.pearsonr` per column (NaN where a column is constant)."""
    import warnings

    from scipy.stats import ConstantInputWarning, pearsonr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return np.array([pearsonr(y_true[:, g], y_pred[:, g])[0] for g in range(y_true.shape[1])],
                        dtype=np.float64)
