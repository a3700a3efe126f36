"""Classification from embeddings: UNI's probe objective against a direct scipy minimisation, kNN ties as
sklearn, grouping rules, planted classes recovered and a chance-level control."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from mvh.errors import DataError, UsageError
from mvh.progress import FOLDS, Event, Recorder
from mvh.store import EmbeddingStore
from mvh.tasks import classifiers
from mvh.tasks.classifiers import choose_c, fit_uni_probe, predict_knn, predict_probe, uni_c
from mvh.tasks.classify import ClassifierSettings, evaluate_classification
from mvh.tasks.tile_labels import labelled_embeddings, read_image_folder, tile_groups
from tests.conftest import synthetic_fingerprint


@pytest.fixture(autouse=True, scope="module")
def _torch_single_thread():
    """Tiny L-BFGS problems crawl when torch's threads fight over the few test cores: use one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _planted(n_per=40, n_classes=3, dim=32, sep=2.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * sep
    y = np.repeat(np.arange(n_classes), n_per)
    X = (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    groups = np.array([f"slide{i % 8}" for i in range(len(y))])
    return X, np.array([f"class{c}" for c in y]), groups


def scipy_uni_optimum(X, y, n_classes, c):
    """The stated objective written out here (mean CE + (1/C) * 0.5 * ||W||_F), minimised by scipy."""
    n, d = X.shape

    def objective(theta):
        W = theta[: n_classes * d].reshape(n_classes, d)
        b = theta[n_classes * d :]
        logits = X @ W.T + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        norm = np.linalg.norm(W)
        loss = -np.log(p[np.arange(n), y]).mean() + 0.5 * norm / c
        g = p.copy()
        g[np.arange(n), y] -= 1
        g /= n
        grad_w = g.T @ X + 0.5 * W / max(norm, 1e-300) / c
        return loss, np.concatenate([grad_w.ravel(), g.sum(axis=0)])

    start = np.full(n_classes * d + n_classes, 0.01)
    res = minimize(objective, start, jac=True, method="L-BFGS-B",
                   options={"maxiter": 20000, "gtol": 1e-12, "ftol": 1e-15})
    return res.x[: n_classes * d].reshape(n_classes, d), res.x[n_classes * d :], res.fun


@pytest.mark.parametrize("c", [5.0, 0.5])
def test_uni_probe_reaches_the_optimum_of_the_stated_objective(c):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 1.5
    y = np.repeat(np.arange(3), 30)
    X = centres[y] + rng.normal(size=(90, 8))
    W, b = fit_uni_probe(X, y, 3, c)
    W_ref, b_ref, f_ref = scipy_uni_optimum(X, y, 3, c)
    assert classifiers.uni_objective(W, b, X, y, c) == pytest.approx(f_ref, abs=1e-8)
    np.testing.assert_allclose(W, W_ref, atol=1e-3)
    # The bias is unpenalised and softmax ignores a common shift: compare centred biases.
    np.testing.assert_allclose(b - b.mean(), b_ref - b_ref.mean(), atol=1e-3)
    assert np.linalg.norm(W) > 0.1


def test_uni_c_rule_and_raw_features():
    assert uni_c(768, 9) == pytest.approx(69.12)
    # UNI's probe sees raw features: scaling them changes its optimum, unlike a standardised probe.
    X, labels, _ = _planted(n_per=15, dim=8)
    y = np.unique(labels, return_inverse=True)[1]
    _, p1 = predict_probe("uni", X, y, X, 3, 0.5)
    _, p2 = predict_probe("uni", X * 10, y, X * 10, 3, 0.5)
    assert np.abs(p1 - p2).max() > 1e-3


def test_sklearn_probe_is_standardised_logistic_regression():
    X, labels, _ = _planted()
    y = np.unique(labels, return_inverse=True)[1]
    _, proba = predict_probe("sklearn", X[::2], y[::2], X[1::2], 3, uni_c(32, 3))
    sc = StandardScaler().fit(X[::2])
    ref = LogisticRegression(C=uni_c(32, 3), max_iter=1000).fit(sc.transform(X[::2]), y[::2])
    np.testing.assert_allclose(proba, ref.predict_proba(sc.transform(X[1::2])), atol=1e-6)


def test_knn_ties_go_to_the_lowest_class_index_as_sklearn():
    # Hand example: 2 of 4 neighbours each; the nearest one is class 1, the vote still goes to class 0.
    Xtr = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1, -1]], dtype=np.float32)
    ytr = np.array([1, 1, 0, 0, 2])
    pred, proba = predict_knn(Xtr, ytr, np.array([[0.6, 0.5]], dtype=np.float32), 3, k=4)
    assert proba[0].tolist() == [0.5, 0.5, 0.0] and pred.tolist() == [0]
    # Random data with an even k (many ties): same predictions as sklearn on the same preprocessing.
    rng = np.random.default_rng(4)
    Xtr, Xte = rng.normal(size=(60, 6)), rng.normal(size=(40, 6))
    ytr = rng.integers(0, 3, size=60)
    mean = Xtr.mean(axis=0)

    def prep(x):
        x = x - mean
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    ref = KNeighborsClassifier(n_neighbors=6, algorithm="brute").fit(prep(Xtr), ytr)
    pred, proba = predict_knn(Xtr, ytr, Xte, 3, k=6)
    assert (pred == ref.predict(prep(Xte))).all()
    np.testing.assert_allclose(proba, ref.predict_proba(prep(Xte)))


def test_cv_choice_of_c_keeps_groups_together(monkeypatch):
    X, labels, groups = _planted(n_per=24, dim=8)
    y = np.unique(labels, return_inverse=True)[1]
    code = np.unique(groups, return_inverse=True)[1]
    X = np.column_stack([code, X])  # column 0 carries the group, so the spy can see it
    seen = []
    real = classifiers.predict_probe

    def spy(probe, Xtr, ytr, Xte, *args):
        seen.append((set(Xtr[:, 0]), set(Xte[:, 0])))
        return real(probe, Xtr, ytr, Xte, *args)

    monkeypatch.setattr(classifiers, "predict_probe", spy)
    c = choose_c("sklearn", X, y, groups, 3)
    assert c in [uni_c(9, 3) * f for f in classifiers.CV_FACTORS]
    assert len(seen) == 3 * len(classifiers.CV_FACTORS)
    assert all(not (train & test) for train, test in seen)
    with pytest.raises(DataError, match="at least 2 groups"):
        choose_c("sklearn", X, y, np.zeros(len(y)).astype(str), 3)


@pytest.mark.parametrize("method", ["probe", "knn"])
def test_planted_classes_are_recovered_with_grouped_folds(method):
    X, labels, groups = _planted()
    recorder = Recorder()
    settings = ClassifierSettings(methods=(method,), folds=4)
    classes, folds, rows, notes = evaluate_classification({"m": X}, labels, settings, groups,
                                                          progress=recorder)
    (r,) = rows
    assert r.balanced_accuracy.mean > 0.95 and r.auroc.mean > 0.98
    assert np.sum(r.confusion) == len(labels) and classes == ["class0", "class1", "class2"]
    assert recorder.count(Event.ADVANCE, FOLDS) == 4 == recorder.count(Event.TOTAL, FOLDS) and not notes
    for fold in folds:
        assert not set(groups[fold.train]) & set(groups[fold.test])
    if method == "probe":
        assert r.c_per_fold == [uni_c(32, 3)] * 4


def test_random_embeddings_are_at_chance():
    X, labels, groups = _planted(sep=0.0, seed=1)
    _, _, rows, _ = evaluate_classification({"m": X}, labels, ClassifierSettings(folds=4), groups=groups)
    assert all(r.balanced_accuracy.mean < 0.55 for r in rows)


def test_a_probe_that_learns_nothing_is_reported():
    # Nearly constant raw features: UNI's unsquared penalty puts every weight at exactly zero.
    X, labels, groups = _planted(dim=8)
    X = 1.0 + 1e-6 * X
    settings = ClassifierSettings(methods=("probe",), folds=2)
    _, _, rows, notes = evaluate_classification({"m": X}, labels, settings, groups)
    assert rows[0].balanced_accuracy.mean == pytest.approx(1 / 3) and len(notes) == 2
    assert "set every weight to zero" in notes[0]


def test_given_split_and_bad_split():
    X, labels, _ = _planted(n_per=20, n_classes=2)
    split = np.where(np.arange(len(labels)) % 3 == 0, "test", "train")
    embeddings = {"a": X, "b": X * 2}
    _, folds, rows, _ = evaluate_classification(embeddings, labels, ClassifierSettings(), split=split)
    assert [f.name for f in folds] == ["given"] and len(rows) == 4
    assert len(rows[0].balanced_accuracy.folds) == 1
    with pytest.raises(DataError, match="'train' and 'test'"):
        bad = np.where(split == "test", "val", split)
        evaluate_classification({"a": X}, labels, ClassifierSettings(), split=bad)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"methods": ("svm",)}, "--method"), ({"probe": "UNI-ish"}, "--probe"), ({"probe_c": "-1"}, "--probe-c"),
     ({"probe_c": "abc"}, "--probe-c"), ({"knn_k": 0}, "--knn-k"), ({"folds": 1}, "--folds")],
)
def test_settings_validate_themselves(kwargs, flag):
    with pytest.raises(UsageError, match=flag):
        ClassifierSettings(**kwargs)


def test_grouping_rules(tmp_path: Path):
    table = pd.DataFrame({"tile_id": ["a", "b"], "label": ["x", "y"], "group": ["g1", "g2"],
                          "patient": ["p1", "p1"]})
    assert tile_groups(table, np.array(["s1", "s2"]))[1] == "group column"
    assert tile_groups(table.drop(columns="group"), np.array(["s1", "s2"]))[:2][1] == "patient column"
    groups, how, notes = tile_groups(table.drop(columns=["group", "patient"]), np.array(["s1", "s1"]))
    assert how == "slide" and groups.tolist() == ["s1", "s1"] and not notes
    for cls, slide in (("tumour", "slideA"), ("tumour", "slideB"), ("stroma", "slideA")):
        (tmp_path / "nested" / cls / slide).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "nested" / cls / slide / "t.png")
    nested = read_image_folder(tmp_path / "nested")
    groups, how, notes = tile_groups(nested, None)
    assert how == "source folder" and sorted(groups) == ["slideA", "slideA", "slideB"] and not notes
    (tmp_path / "flat" / "a").mkdir(parents=True)
    (tmp_path / "flat" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a" / "1.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "b" / "2.png")
    groups, how, notes = tile_groups(read_image_folder(tmp_path / "flat"), None)
    assert how == "image" and len(set(groups)) == 2 and "image by image" in notes[0]


def test_labelled_embeddings_one_scan_and_unknown_ids(tmp_path: Path):
    fp = synthetic_fingerprint(4)
    store = EmbeddingStore.create(tmp_path / "store", fp)
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    tiles = pd.DataFrame({"tile_id": ["t0", "t1", "t2"], "x": [0, 1, 2], "y": 0, "tile_px": 224, "mpp": 0.5,
                          "tissue_fraction": 1.0})
    store.add_slide({"slide_id": "S", "path": None}, tiles, emb)
    X, slides = labelled_embeddings(store, ["t2", "t0"], "labels.csv")
    np.testing.assert_array_equal(X, emb[[2, 0]])
    assert slides.tolist() == ["S", "S"]
    with pytest.raises(DataError, match=r"labels.csv: 1 tile_id\(s\) are not done tiles"):
        labelled_embeddings(store, ["t0", "zz"], "labels.csv")


def test_the_config_reads_no_files_and_the_job_checks_them_first(tmp_path: Path) -> None:
    from mvh.tasks.classify import ClassifyConfig, run_classify
    from mvh.tasks.stores import StoreSpec

    spec = (StoreSpec(str(tmp_path / "absent.lance")),)
    absent_labels = ClassifyConfig(stores=spec, out=tmp_path / "o", labels=tmp_path / "absent.csv")
    absent_images = ClassifyConfig(stores=spec, out=tmp_path / "o", images=tmp_path / "absent")
    with pytest.raises(UsageError, match="--labels .*absent.csv: no such file"):
        run_classify(absent_labels)
    with pytest.raises(UsageError, match="absent: image folder not found"):
        run_classify(absent_images)
    assert not (tmp_path / "o").exists()
