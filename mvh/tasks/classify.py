"""Tile classification from frozen embeddings (protocols.md section 2): `run_classify(ClassifyConfig(...))`.

Labels come from an image folder (`CLASS/*.png`, `CLASS/SLIDE/*.png`, or `train|test/CLASS/...` for a
given split) or a CSV (`tile_id` or `path`, `label`, optional `group`, `patient`, `split`). Every model is
evaluated on the same folds: the given train/test split, or stratified k-fold grouped so that the tiles
of one group never straddle train and test. The group of a tile is, in this order: the CSV's `group`
column; its `patient` column; the slide of a stored tile (`tile_id` CSVs); the SLIDE sub-folder of an
image folder; else the image itself (nothing links images to slides then, which a note says).
Label sources: `mvh.tasks.tile_labels`; classifiers: `mvh.tasks.classifiers` (UNI's linear probe by
default, the sklearn variant, kNN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mvh.errors import DataError, UsageError
from mvh.jobs import JobResult
from mvh.progress import FOLDS, Event, Progress, report
from mvh.tasks.classifiers import PROBES, choose_c, predict_knn, predict_probe, uni_c
from mvh.tasks.metrics import MetricSummary, classification_metrics, summarize
from mvh.tasks.splits import Fold, stratified_group_folds
from mvh.tasks.stores import StoreSpec
from mvh.tasks.tile_labels import (
    embed_image_files,
    labelled_embeddings,
    read_image_folder,
    read_label_csv,
    tile_groups,
)

METHODS = ("probe", "knn")


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ClassifierSettings:
    """Methods and their parameters (validated on construction: UsageError naming the flag)."""

    methods: tuple[str, ...] = METHODS
    probe: str = "uni"
    probe_c: str = "uni"
    knn_k: int = 20
    folds: int = 5
    seed: int = 0
    max_iter: int = 1000

    def __post_init__(self) -> None:
        methods = tuple(self.methods)
        if not methods or any(m not in METHODS for m in methods):
            raise UsageError(f"--method {','.join(methods)}: use probe, knn or probe,knn")
        object.__setattr__(self, "methods", methods)
        if self.probe not in PROBES:
            raise UsageError(f"--probe {self.probe!r}: use uni (UNI's objective) or sklearn")
        if self.probe_c not in ("uni", "cv"):
            try:
                value = float(self.probe_c)
            except ValueError:
                value = float("nan")
            if not (math.isfinite(value) and value > 0):
                raise UsageError(
                    f"--probe-c {self.probe_c}: use uni (C = D*classes/100), cv or a positive number"
                )
        for flag, value, low in (("--knn-k", self.knn_k, 1), ("--folds", self.folds, 2),
                                 ("--max-iter", self.max_iter, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{flag} {value}: give an integer of at least {low}")


@dataclass(frozen=True)
class ClassifyConfig:
    """Settings of `mvh eval classify` (validated on construction: UsageError naming the flag)."""

    stores: tuple[StoreSpec, ...]
    out: Path
    images: Path | None = None
    labels: Path | None = None
    settings: ClassifierSettings = field(default_factory=ClassifierSettings)
    device: str = "auto"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if (self.images is None) == (self.labels is None):
            raise UsageError("give exactly one label source: an image folder (IMAGES) or --labels CSV")
        if not self.stores:
            raise UsageError("no model given: pass --model NAME, --models a,b or --store PATH")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size}: give a positive integer")
        object.__setattr__(self, "stores", tuple(self.stores))
        object.__setattr__(self, "out", Path(self.out))


# ---------------------------------------------------------------------------- results
@dataclass
class MethodResult:
    """One model and method: metrics over folds, confusion matrix summed over folds, C per fold."""

    model: str
    method: str
    balanced_accuracy: MetricSummary
    weighted_f1: MetricSummary
    auroc: MetricSummary
    confusion: list[list[int]]
    c_per_fold: list[float] | None = None


@dataclass
class FoldInfo:
    """Sizes of one fold."""

    name: str
    n_train: int
    n_test: int


@dataclass
class ClassifyResult(JobResult, job="classify"):
    """Results of `mvh eval classify` (results.json is exactly `to_dict()`)."""

    classes: list[str]
    n_tiles: int
    split: str
    grouping: str
    n_groups: int | None
    folds: list[FoldInfo]
    methods: list[str]
    probe: str
    probe_c: str
    knn_k: int
    seed: int
    results: list[MethodResult]
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def result(self, model: str, method: str) -> MethodResult:
        """The result of one model and method (KeyError if absent)."""
        for row in self.results:
            if row.model == model and row.method == method:
                return row
        raise KeyError((model, method))


# ---------------------------------------------------------------------------- evaluation
def classification_folds(
    labels: np.ndarray, groups: np.ndarray | None, split: np.ndarray | None, folds: int, seed: int
) -> list[Fold]:
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
    return stratified_group_folds(labels, groups, folds, seed)


def evaluate_classification(
    embeddings: dict[str, np.ndarray],
    labels: Sequence[str] | np.ndarray,
    settings: ClassifierSettings,
    groups: Sequence[str] | np.ndarray | None = None,
    split: Sequence[str] | np.ndarray | None = None,
    progress: Progress | None = None,
) -> tuple[list[str], list[Fold], list[MethodResult], list[str]]:
    """Evaluate each model's embeddings [N, D] on the same folds -> (classes, folds, one result per
    model and method, notes)."""
    classes, y = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"only {len(classes)} label value(s) found; classification needs at least 2")
    group_arr = None if groups is None else np.asarray(groups).astype(str)
    folds = classification_folds(y, group_arr, None if split is None else np.asarray(split),
                                 settings.folds, settings.seed)
    n_classes = len(classes)
    report(progress, Event.TOTAL, FOLDS, len(embeddings) * len(settings.methods) * len(folds))
    rows, notes = [], []
    for name, X in embeddings.items():
        if len(X) != len(y):
            raise DataError(f"model {name}: {len(X)} embeddings for {len(y)} labelled tiles")
        for method in settings.methods:
            per_fold, cs = [], []
            for fold in folds:
                report(progress, Event.STATUS, FOLDS, 0, f"{name} {method} {fold.name}")
                Xtr, ytr, Xte = X[fold.train], y[fold.train], X[fold.test]
                if method == "probe":
                    c = _probe_c(settings, Xtr, ytr, group_arr, fold, n_classes)
                    cs.append(c)
                    pred, proba = predict_probe(settings.probe, Xtr, ytr, Xte, n_classes, c,
                                                settings.max_iter, settings.seed)
                    if len(proba) > 1 and np.ptp(proba, axis=0).max() < 1e-9:
                        notes.append(
                            f"{name} probe {fold.name}: the same prediction for every tile (at C = {c:g} the "
                            "penalty set every weight to zero; the features barely vary): try --probe-c cv"
                        )
                else:
                    pred, proba = predict_knn(Xtr, ytr, Xte, n_classes, settings.knn_k)
                per_fold.append(classification_metrics(y[fold.test], pred, proba, n_classes))
                report(progress, Event.ADVANCE, FOLDS, 1)
            summaries = {key: MetricSummary(**summarize([f[key] for f in per_fold]))
                         for key in ("balanced_accuracy", "weighted_f1", "auroc")}
            confusion = np.sum([f["confusion"] for f in per_fold], axis=0).astype(int).tolist()
            rows.append(MethodResult(model=name, method=method, confusion=confusion,
                                     c_per_fold=cs if method == "probe" else None, **summaries))
    return classes.tolist(), folds, rows, notes


def _probe_c(
    settings: ClassifierSettings, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, fold: Fold,
    n_classes: int,
) -> float:
    if settings.probe_c == "uni":
        return uni_c(X.shape[1], n_classes)
    if settings.probe_c != "cv":
        return float(settings.probe_c)
    inner_groups = groups[fold.train] if groups is not None else np.arange(len(y)).astype(str)
    return choose_c(settings.probe, X, y, inner_groups, n_classes, settings.max_iter, settings.seed)


# ---------------------------------------------------------------------------- the job
def run_classify(cfg: ClassifyConfig, *, progress: Progress | None = None) -> ClassifyResult:
    """The whole `mvh eval classify` job: labels, embeddings of every model (image files embedded on
    demand), the same folds for every model; writes results.json, then the confusion-matrix PNGs."""
    from mvh.tasks.plots import plot_confusion
    from mvh.tasks.stores import open_spec

    if cfg.images is not None and not Path(cfg.images).is_dir():
        raise UsageError(f"{cfg.images}: image folder not found; pass a folder of class subfolders")
    if cfg.labels is not None and not Path(cfg.labels).is_file():
        raise UsageError(f"--labels {cfg.labels}: no such file; give a CSV of tile_id or path, label")
    if cfg.images is not None:
        table = read_image_folder(Path(cfg.images))
        source = str(cfg.images)
    else:
        csv = Path(str(cfg.labels))
        table = read_label_csv(csv)
        source = str(csv)
        if "path" in table.columns and "tile_id" not in table.columns:
            table["path"] = [str((csv.parent / p).resolve()) for p in table["path"]]
    embeddings: dict[str, np.ndarray] = {}
    slides = None
    store_info = {}
    for spec in cfg.stores:
        label, store, factory = open_spec(spec, cfg.device)
        if "tile_id" in table.columns:
            X, slides = labelled_embeddings(store, table["tile_id"].astype(str).tolist(), source)
        else:
            ids = embed_image_files(table["path"].tolist(), store, factory, cfg.batch_size, progress)
            X, _ = labelled_embeddings(store, ids, source)
        if label in embeddings:
            label = f"{label}@{Path(spec.uri).stem}"
        embeddings[label] = X
        store_info[label] = {"uri": store.uri, "fingerprint": store.fingerprint.describe(),
                             "snapshot": store.snapshot()}
    groups, grouping, notes = tile_groups(table, slides)
    split = table["split"].to_numpy() if "split" in table.columns else None
    s = cfg.settings
    n_groups = int(len(np.unique(groups)))
    if split is None and n_groups < s.folds:
        raise DataError(
            f"{source}: {n_groups} group(s) ({grouping}) for {s.folds} folds, and the tiles of one group "
            "never straddle train and test: lower --folds, or give a group column (group = tile_id for "
            "an optimistic tile-level split)"
        )
    if split is not None and s.probe_c != "cv":
        notes = []  # the grouping only matters for folds this run does not make
    for note in notes:
        report(progress, Event.NOTE, FOLDS, 0, note)
    classes, folds, rows, fit_notes = evaluate_classification(
        embeddings, table["label"].to_numpy(), s, groups, split, progress
    )
    for note in fit_notes:
        report(progress, Event.NOTE, FOLDS, 0, note)
    notes += fit_notes
    out = cfg.out
    figures = [out / f"confusion_{_safe(r.model)}_{r.method}.png" for r in rows]
    result = ClassifyResult(
        classes=classes, n_tiles=len(table), split="given" if split is not None else "grouped-kfold",
        grouping=grouping, n_groups=n_groups, methods=list(s.methods),
        folds=[FoldInfo(f.name, len(f.train), len(f.test)) for f in folds], probe=s.probe,
        probe_c=s.probe_c, knn_k=s.knn_k, seed=s.seed, results=rows, stores=store_info,
        figures=[str(p) for p in figures], notes=notes,
    )
    try:
        result.write_json(out / "results.json")
    except OSError as exc:
        raise DataError(f"cannot write {out / 'results.json'}: {exc}; choose another --out") from exc
    for row, path in zip(rows, figures, strict=True):
        plot_confusion(row.confusion, classes, path, f"{row.model} {row.method}")
    return result


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
