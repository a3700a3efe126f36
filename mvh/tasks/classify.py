"""Tile classification from frozen embeddings: linear probe and kNN (UNI conventions).

- Linear probe: StandardScaler -> L2 logistic regression, C = D * n_classes / 100 ("uni") or chosen by
  inner cross-validation ("cv"), max_iter 1000.
- kNN: k = 20, cosine similarity on embeddings centred on the training mean and L2-normalised, majority
  vote (vote fractions as class probabilities).
Splits: the given train/test rows, or stratified k-fold grouped by slide/patient so that the tiles of
one group never straddle train and test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvh.errors import DataError, UsageError
from mvh.tasks.metrics import classification_metrics, jsonable, summarize
from mvh.tasks.splits import Fold, stratified_group_folds

METHODS = ("probe", "knn")
Progress = Callable[[str, int], None]


def uni_c(dim: int, n_classes: int) -> float:
    """The UNI linear-probe rule: C = 1 / lambda with lambda = 100 / (D * n_classes)."""
    return dim * n_classes / 100.0


def fit_predict_probe(
    X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_classes: int,
    c: str | float = "uni", max_iter: int = 1000, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on standardised embeddings -> (predicted labels [N], probabilities [N, C])."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_train)
    Xtr = scaler.transform(X_train)
    Xte = scaler.transform(X_test)
    if c == "cv":
        clf = LogisticRegressionCV(Cs=np.logspace(-4, 2, 7).tolist(), cv=3, max_iter=max_iter,
                                   random_state=seed, scoring="balanced_accuracy")
    else:
        value = uni_c(X_train.shape[1], n_classes) if c == "uni" else float(c)
        clf = LogisticRegression(C=value, max_iter=max_iter, random_state=seed)
    clf.fit(Xtr, y_train)
    proba = np.zeros((len(Xte), n_classes), dtype=np.float64)
    proba[:, clf.classes_] = clf.predict_proba(Xte)
    return proba.argmax(axis=1), proba


def fit_predict_knn(
    X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_classes: int, k: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine kNN on centred, L2-normalised embeddings -> (labels [N], vote fractions [N, C])."""
    import faiss

    mean = X_train.mean(axis=0, keepdims=True)

    def prep(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x - mean, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    k = min(k, len(X_train))
    index = faiss.IndexFlatIP(X_train.shape[1])
    index.add(prep(X_train))
    _, nn = index.search(prep(X_test), k)
    votes = np.zeros((len(X_test), n_classes), dtype=np.float64)
    np.add.at(votes, (np.repeat(np.arange(len(X_test)), k), np.asarray(y_train)[nn.ravel()]), 1.0)
    proba = votes / k
    # Ties go to the class whose nearest member ranks highest: argmax over votes + a rank bonus < 1 vote.
    bonus = np.zeros_like(votes)
    ranks = np.broadcast_to(np.arange(k, 0, -1, dtype=np.float64) / (k + 1) ** 2, nn.shape)
    cells = (np.repeat(np.arange(len(X_test)), k), np.asarray(y_train)[nn.ravel()])
    np.maximum.at(bonus, cells, ranks.ravel())
    return (votes + bonus).argmax(axis=1), proba


@dataclass
class ClassifyConfig:
    """Settings of one classification evaluation (saved with its results)."""

    methods: tuple[str, ...] = METHODS
    folds: int = 5
    seed: int = 0
    probe_c: str = "uni"
    knn_k: int = 20
    max_iter: int = 1000


def classification_folds(labels: np.ndarray, groups: np.ndarray | None, split: np.ndarray | None,
                         config: ClassifyConfig) -> list[Fold]:
    """The given train/test split (values "train"/"test") when present, else grouped stratified k-fold."""
    if split is not None:
        split = np.asarray(split).astype(str)
        bad = set(np.unique(split)) - {"train", "test"}
        if bad:
            raise DataError(f"split column has values {sorted(bad)}; use only 'train' and 'test'")
        rows = np.arange(len(split), dtype=np.int64)
        train, test = rows[split == "train"], rows[split == "test"]
        if not len(train) or not len(test):
            raise DataError("the split column needs both 'train' and 'test' rows")
        return [Fold(0, "given", train, test)]
    return stratified_group_folds(labels, groups, config.folds, config.seed)


def evaluate_classification(
    embeddings: dict[str, np.ndarray],
    labels: Sequence[str] | np.ndarray,
    config: ClassifyConfig,
    groups: Sequence[str] | np.ndarray | None = None,
    split: Sequence[str] | np.ndarray | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate each model's tile embeddings [N, D] on the same folds -> results JSON object.

    `{"settings", "classes", "models": {model: {method: {"balanced_accuracy"|"weighted_f1"|"auroc":
    {"mean","std","folds"}, "confusion": summed over folds}}}}`.
    """
    for m in config.methods:
        if m not in METHODS:
            raise UsageError(f"method {m!r} is unknown; use one of {', '.join(METHODS)}")
    classes, y = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"only {len(classes)} label value(s) found; classification needs at least 2")
    folds = classification_folds(y, None if groups is None else np.asarray(groups),
                                 None if split is None else np.asarray(split), config)
    n_classes = len(classes)
    models: dict[str, Any] = {}
    for name, X in embeddings.items():
        if len(X) != len(y):
            raise DataError(f"model {name}: {len(X)} embeddings for {len(y)} labelled tiles")
        models[name] = {}
        for method in config.methods:
            per_fold = []
            for fold in folds:
                Xtr, ytr, Xte = X[fold.train], y[fold.train], X[fold.test]
                if method == "probe":
                    pred, proba = fit_predict_probe(Xtr, ytr, Xte, n_classes, config.probe_c,
                                                    config.max_iter, config.seed)
                else:
                    pred, proba = fit_predict_knn(Xtr, ytr, Xte, n_classes, config.knn_k)
                per_fold.append(classification_metrics(y[fold.test], pred, proba, n_classes))
                if progress is not None:
                    progress(f"{name} {method} {fold.name}", 1)
            models[name][method] = {
                key: summarize([f[key] for f in per_fold])
                for key in ("balanced_accuracy", "weighted_f1", "auroc")
            }
            models[name][method]["confusion"] = np.sum([f["confusion"] for f in per_fold], axis=0).tolist()
    kind = "given" if split is not None else ("grouped-kfold" if groups is not None else "kfold")
    settings = {**asdict(config), "methods": list(config.methods), "n_tiles": len(y), "split": kind,
                "folds_detail": [{"name": f.name, "n_train": len(f.train), "n_test": len(f.test)}
                                 for f in folds]}
    return {"settings": settings, "classes": classes.tolist(), "models": models}


def write_confusion_figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """One confusion-matrix PNG per model and method under `out_dir`."""
    from mvh.tasks.plots import plot_confusion

    paths = []
    for model, per_method in results["models"].items():
        for method, res in per_method.items():
            path = out_dir / f"confusion_{_safe(model)}_{method}.png"
            plot_confusion(res["confusion"], results["classes"], path, f"{model} {method}")
            paths.append(path)
    return paths


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def classify_table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and method: balanced accuracy, weighted F1, AUROC (mean, std)."""
    rows = []
    for model, per_method in results["models"].items():
        for method, res in per_method.items():
            rows.append({"model": model, "method": method,
                         **{f"{k}_{s}": res[k][s] for k in ("balanced_accuracy", "weighted_f1", "auroc")
                            for s in ("mean", "std")}})
    return rows


def read_label_csv(path: Path) -> pd.DataFrame:
    """Read a labels CSV: `tile_id` or `path`, `label`, optional `group` and `split` (train/test)."""
    if not path.exists():
        raise DataError(f"{path}: labels CSV not found; pass an existing file")
    df = pd.read_csv(path, dtype=str)
    if "label" not in df.columns or not ({"tile_id", "path"} & set(df.columns)):
        raise DataError(f"{path}: needs a 'label' column and a 'tile_id' or 'path' column")
    if df["label"].isna().any():
        raise DataError(f"{path}: {int(df['label'].isna().sum())} rows without a label; fill or drop them")
    return df


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def read_image_folder(root: Path) -> pd.DataFrame:
    """Labels of a folder-per-class image set: `root/<class>/*.png`, or `root/{train,test}/<class>/...`
    (a given split) -> columns path (absolute), label, and split when given."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found; pass a folder with one subfolder per class")
    parts = [("train", root / "train"), ("test", root / "test")]
    given = all(p.is_dir() for _, p in parts)
    rows = []
    for split, base in parts if given else [(None, root)]:
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    row = {"path": str(f.resolve()), "label": class_dir.name}
                    if split is not None:
                        row["split"] = split
                    rows.append(row)
    if not rows:
        raise DataError(f"{root}: no png/jpg/tif images in class subfolders; see `mvh eval classify --help`")
    return pd.DataFrame(rows)


def _image_tag(path: Path) -> str:
    import hashlib

    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]


def embed_image_files(
    paths: Sequence[str], store: Any, embedder_factory: Callable[[], Any], batch_size: int = 64,
    progress: Progress | None = None,
) -> list[str]:
    """Embed image files into `store` (one store slide per folder, tile_id = `<folder slide id>/<name>`),
    skipping folders already done; return the tile ids of `paths` in order."""
    from PIL import Image

    from mvh.extractor.slide import pil_to_rgb

    files = [Path(p) for p in paths]
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.parent.resolve(), []).append(f)
    done = set(store.slide_ids("done"))
    slide_of = {folder: f"images:{_image_tag(folder)}:{folder.name}" for folder in by_folder}
    embedder = None
    fp = store.fingerprint
    for folder, members in by_folder.items():
        slide_id = slide_of[folder]
        if slide_id in done:
            continue
        # The whole folder is one slide, so a later subset of it is found here.
        members = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        embedder = embedder or embedder_factory()
        chunks, sizes = [], []
        for start in range(0, len(members), 256):
            images = []
            for p in members[start : start + 256]:
                try:
                    with Image.open(p) as im:
                        images.append(pil_to_rgb(im))
                except OSError as exc:
                    raise DataError(f"{p}: cannot read the image ({exc}); remove or replace it") from exc
            sizes += [im.shape[1] for im in images]
            chunks.append(embedder.embed_images(images, batch_size))
        tiles = pd.DataFrame({"tile_id": [f"{slide_id}/{p.name}" for p in members], "x": 0, "y": 0,
                              "tile_px": sizes, "mpp": fp.mpp, "tissue_fraction": np.nan})
        store.add_slide({"slide_id": slide_id, "path": str(folder), "mpp": fp.mpp, "mpp_source": "images"},
                        tiles, np.concatenate(chunks))
        if progress is not None:
            progress(f"embedded {folder}", len(members))
    return [f"{slide_of[f.parent.resolve()]}/{f.name}" for f in files]


def labelled_embeddings(store: Any, tile_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [N, D] of `tile_ids` (StoreError naming a missing id) and their slide ids [N]."""
    rows = store.rows_by_tile_ids(list(tile_ids), with_embeddings=True)
    return np.stack(rows["embedding"].to_list()).astype(np.float32), rows["slide_id"].to_numpy().astype(str)


def run_classify(
    stores: Sequence[Any],
    config: ClassifyConfig,
    out_dir: str | Path,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 64,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The whole `mvh eval classify` job: labels from an image folder or CSV, embeddings from each store
    (image files embedded on demand), the same folds for every model; writes results.json and PNGs."""
    import json

    from mvh.tasks.stores import open_spec

    if (images is None) == (labels is None):
        raise UsageError("give exactly one label source: an image folder or --labels CSV")
    if not stores:
        raise UsageError("no model given: pass --model NAME, --models a,b or --store PATH")
    if images is not None:
        table = read_image_folder(Path(images))
    else:
        csv = Path(labels)
        table = read_label_csv(csv)
        if "path" in table.columns and "tile_id" not in table.columns:
            table["path"] = [str((csv.parent / p).resolve()) for p in table["path"]]
    embeddings: dict[str, np.ndarray] = {}
    groups = table["group"].to_numpy().astype(str) if "group" in table.columns else None
    store_info = {}
    for spec in stores:
        label, store, factory = open_spec(spec, device)
        if "tile_id" in table.columns:
            X, slides = labelled_embeddings(store, table["tile_id"].astype(str).tolist())
            if groups is None and len(set(slides)) > 1:
                groups = slides  # tiles of one slide never straddle train and test
        else:
            ids = embed_image_files(table["path"].tolist(), store, factory, batch_size, progress)
            X, _ = labelled_embeddings(store, ids)
        if label in embeddings:
            label = f"{label}@{Path(spec.uri).stem}"
        embeddings[label] = X
        store_info[label] = {"uri": store.uri, "fingerprint": store.fingerprint.describe()}
    split = table["split"].to_numpy() if "split" in table.columns else None
    results = evaluate_classification(embeddings, table["label"].to_numpy(), config, groups, split, progress)
    results["settings"]["stores"] = store_info
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results["figures"] = [str(p) for p in write_confusion_figures(results, out)]
    (out / "results.json").write_text(json.dumps(jsonable(results), indent=2))
    return results
