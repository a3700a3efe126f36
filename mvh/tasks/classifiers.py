"""Tile classifiers on frozen embeddings: UNI's linear probe, the sklearn variant, and kNN.

- `uni` (default): UNI's default linear probe (mahmoodlab/UNI, eval_patch_features/logistic_regression.py
  and linear_probe.py with `use_sklearn=False`): a linear layer with bias on the RAW embeddings, zero
  initialised, minimising mean cross-entropy + (1/C) * 0.5 * ||W||_F (the Frobenius norm of the weights,
  NOT squared; the bias is not penalised) with L-BFGS (strong-Wolfe line search, max_iter 1000 in one
  `step`), C = D * n_classes / 100. UNI runs it in float32 on a GPU; here it runs in float64 on the CPU.
- `sklearn`: StandardScaler, then sklearn's LogisticRegression with the same C, which multiplies the
  SUMMED loss and penalises 0.5 * ||W||^2: a different objective that is never called "UNI".
- kNN: k = 20, cosine on embeddings centred on the training mean and L2-normalised, majority vote with
  ties going to the lowest class index (as UNI's sklearn KNeighborsClassifier), vote fractions as
  class probabilities.
"""

from __future__ import annotations

import numpy as np

from mvh.core.vectors import l2_normalise
from mvh.errors import DataError
from mvh.index.exact import exact_search
from mvh.tasks.splits import stratified_group_folds

PROBES = ("uni", "sklearn")
CV_FACTORS = tuple(10.0 ** np.arange(-3, 4))  # `--probe-c cv` grid: uni_c(D, K) times these
CV_FOLDS = 3


def uni_c(dim: int, n_classes: int) -> float:
    """The UNI linear-probe rule: C = D * n_classes / 100."""
    return dim * n_classes / 100.0


def uni_objective(weight: np.ndarray, bias: np.ndarray, X: np.ndarray, y: np.ndarray, c: float) -> float:
    """UNI's probe objective: mean cross-entropy + (1/C) * 0.5 * ||W||_F (W [K, D], bias [K])."""
    logits = X @ weight.T + bias
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean() + 0.5 * np.linalg.norm(weight) / c)


def fit_uni_probe(
    X: np.ndarray, y: np.ndarray, n_classes: int, c: float, max_iter: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise `uni_objective` from zero with torch's L-BFGS (strong Wolfe) -> weight [K, D], bias [K]."""
    import torch

    torch.manual_seed(seed)
    feats = torch.as_tensor(np.asarray(X, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(y, dtype=np.int64))
    weight = torch.zeros((n_classes, feats.shape[1]), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], line_search_fn="strong_wolfe", max_iter=max_iter)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = feats @ weight.T + bias
        loss = torch.nn.functional.cross_entropy(logits, labels) + (1.0 / c) * 0.5 * weight.norm(p=2)
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach().numpy(), bias.detach().numpy()


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def predict_probe(
    probe: str, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_classes: int, c: float,
    max_iter: int = 1000, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit probe `uni` or `sklearn` with C = `c` -> (predicted class [N], probabilities [N, n_classes])."""
    if probe == "uni":
        weight, bias = fit_uni_probe(X_train, y_train, n_classes, c, max_iter, seed)
        proba = _softmax(np.asarray(X_test, dtype=np.float64) @ weight.T + bias)
        return proba.argmax(axis=1), proba
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_train)
    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    clf.fit(scaler.transform(X_train), y_train)
    proba = np.zeros((len(X_test), n_classes), dtype=np.float64)
    proba[:, clf.classes_] = clf.predict_proba(scaler.transform(X_test))
    return proba.argmax(axis=1), proba


def choose_c(
    probe: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, n_classes: int, max_iter: int = 1000,
    seed: int = 0,
) -> float:
    """C for `--probe-c cv`: best mean balanced accuracy over grouped stratified inner folds of the
    training rows (groups never straddle inner train/validation), on the grid uni_c * 10^(-3..3)."""
    from sklearn.metrics import balanced_accuracy_score

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise DataError("--probe-c cv needs at least 2 groups in each training fold; use --probe-c uni")
    inner = stratified_group_folds(y, groups, min(CV_FOLDS, n_groups), seed)
    base = uni_c(X.shape[1], n_classes)
    scores = []
    for factor in CV_FACTORS:
        per_fold = []
        for fold in inner:
            pred, _ = predict_probe(probe, X[fold.train], y[fold.train], X[fold.test], n_classes,
                                    base * factor, max_iter, seed)
            per_fold.append(balanced_accuracy_score(y[fold.test], pred))
        scores.append(float(np.mean(per_fold)))
    return base * CV_FACTORS[int(np.argmax(scores))]  # ties: the smallest C (strongest penalty)


def predict_knn(
    X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_classes: int, k: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine kNN on centred, L2-normalised embeddings -> (labels [N], vote fractions [N, C]).

    A tied vote goes to the lowest class index (sklearn's KNeighborsClassifier, as UNI uses it).
    """
    mean = np.asarray(X_train, dtype=np.float64).mean(axis=0, keepdims=True)
    train = l2_normalise(np.asarray(X_train, dtype=np.float64) - mean)
    test = l2_normalise(np.asarray(X_test, dtype=np.float64) - mean)
    k = min(k, len(train))
    _, nn = exact_search(train, test, k)
    votes = np.zeros((len(test), n_classes), dtype=np.float64)
    np.add.at(votes, (np.repeat(np.arange(len(test)), k), np.asarray(y_train)[nn.ravel()]), 1.0)
    return votes.argmax(axis=1), votes / k
