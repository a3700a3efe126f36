"""Typed records of `mvh eval st`: per model and split metrics, folds, samples, stores, embedding sync.

`STResult.to_dict()` is results.json, with `"job": "st"` first so readers (the web app) know its type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mvh.jobs import JobResult
from mvh.tasks.metrics import MetricSummary


@dataclass
class SplitMetrics:
    """One model on one split: metrics over folds, per-gene r, NaN genes and the PCA solver of each fold."""

    level: str
    pcc: MetricSummary
    pcc10: MetricSummary
    mae: MetricSummary
    mse: MetricSummary
    genes: dict[str, float]
    genes_per_fold: list[dict[str, float]]
    nan_genes_per_fold: list[list[str]]
    n_nan_genes: int
    pca_solver_per_fold: list[str | None]


@dataclass
class ModelResult:
    """One model: its metrics per split, and the paper's `drop = 1 - PCC_loso / PCC_random` when both ran."""

    splits: dict[str, SplitMetrics] = field(default_factory=dict)
    drop: float | None = None


@dataclass
class FoldInfo:
    """One fold of a split: sizes, test samples and the genes it regresses."""

    name: str
    n_train: int
    n_test: int
    test_samples: list[str]
    genes: list[str]


@dataclass
class STSettings:
    """The protocol a run used, as run (gene list resolved, HEST-Benchmark split named)."""

    split: str
    splits: list[str]
    levels: dict[str, str]
    folds: int | None
    seed: int
    genes: list[str] | None
    top_genes: int
    regressor: str
    pca: bool
    n_components: int
    group_by_sample: bool
    sklearn_version: str
    n_spots: int
    n_samples: int
    n_patients: int
    folds_by_split: dict[str, list[FoldInfo]]
    how_by_split: dict[str, str]
    drop_bad_spots: bool = False
    inputs: list[str] = field(default_factory=list)
    meta: str | None = None


@dataclass
class SampleInfo:
    """One ST sample: its patient and study (and where they came from) and its level-0 um/px."""

    sample_id: str
    patient: str
    patient_source: str
    study: str
    mpp: float | None
    mpp_source: str


@dataclass
class StoreSnapshot:
    """The store as named (URI, tag or version) and its table versions when read."""

    uri: str
    version: Any
    tables: dict[str, Any]


@dataclass
class StoreInfo:
    """One model's store: where, what made its embeddings, and which snapshot was read."""

    uri: str
    fingerprint: str
    weights_sha256: str
    snapshot: StoreSnapshot


@dataclass
class FileIdentity:
    """Cheap identity of an image file: name, size and `mvh.core.files.sampled_hash` (`sha256-3mib:`)."""

    name: str
    size: int
    file_hash: str


@dataclass
class SampleSync:
    """What bringing one sample's spot tiles into a store did: reused, embedded, and why."""

    sample_id: str
    status: str
    n_spots: int
    n_reused: int
    n_embedded: int
    reasons: list[str]
    source: str
    image: FileIdentity
    h5ad_sha256: str
    slide_mpp: float | None = None


@dataclass
class DroppedSpot:
    """A spot left out by --drop-bad-spots, with its centre and why."""

    sample_id: str
    barcode: str
    x: float
    y: float
    reason: str


@dataclass
class STResult(JobResult, job="st"):
    """Everything `mvh eval st` reports; results.json is exactly `to_dict()` (with `"job": "st"`)."""

    settings: STSettings
    models: dict[str, ModelResult]
    samples: list[SampleInfo]
    stores: dict[str, StoreInfo]
    embedding: dict[str, list[SampleSync]]
    dropped_spots: list[DroppedSpot]
    n_spots_without_embedding: int
    notes: list[str]
    figures: list[str] = field(default_factory=list)
    prediction_tables: list[str] = field(default_factory=list)
