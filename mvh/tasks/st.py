"""Spatial-transcriptomics gene-expression regression from frozen spot embeddings (HEST protocol).

Targets are `log1p(raw counts)` of a fixed gene list, or of the top-k highly variable genes chosen on the
TRAINING spots of each fold only. The regressor is HEST-Benchmark's StandardScaler -> PCA(256) ->
Ridge(alpha = 100 / (n_features * n_genes), no intercept) fit on the training split (`st_model`).
Metrics per fold: Pearson r per gene over the pooled test spots; PCC = mean r over the genes defined in
that fold (genes constant in the test fold have no r: they are NaN and NAMED per fold, never silently
left out; with `hest_exact` a fold with such a gene has PCC NaN, as HEST's np.mean gives), PCC-10 = mean
of the 10 best genes, MAE, MSE; mean +- population std over folds. Splits: `patient` (default, HEST:
k-fold grouped by patient, k = min(5, patients), i.e. leave-one-patient-out with 5 patients or fewer),
`random` (spot-level k-fold: the paper's reference, labelled so), `loso` (leave-one-study-out) and
`hest-bench` (a HEST-Benchmark task's fixed splits). Evaluating random and loso adds the paper's
`drop = 1 - PCC_loso / PCC_random`.

`st_eval.evaluate_st` works on arrays (re-exported here); `run_st(STConfig(...), progress=...)` is the
whole `mvh eval st` job (samples -> stores -> evaluation -> results.json, then figures) -> `STResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvh.errors import DataError, UsageError
from mvh.jobs import JobResult
from mvh.progress import Event, Progress, report
from mvh.store.slide_ids import path_inside
from mvh.tasks.hest_bench import BenchTask, bench_folds, is_bench_task, read_bench_task, read_gene_list
from mvh.tasks.plots import plot_gene_pcc, plot_spatial_expression
from mvh.tasks.splits import SPLITS
from mvh.tasks.st_data import (
    STExpression,
    STSample,
    check_split_metadata,
    find_samples,
    load_expression,
    read_patches_index,
    sample_thumbnail,
)
from mvh.tasks.st_eval import HeldOut, evaluate_st
from mvh.tasks.st_model import REGRESSORS
from mvh.tasks.st_spots import SpotTiles, plan_spot_tiles, sync_store
from mvh.tasks.stores import StoreSpec, open_spec


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


@dataclass
class STConfig:
    """Settings of one ST evaluation; validated on construction (UsageError naming the flag or file).

    Array-level fields drive `evaluate_st`; `inputs`, `stores`, `out_dir`, `meta`, ... drive `run_st`.
    `split=None` means `patient` (or `hest-bench` for a HEST-Benchmark task folder); `compare` runs
    several splits on the same data; `folds=None` means min(5, patients) for patient and 5 for random.
    """

    split: str | None = None
    compare: list[str] | None = None
    folds: int | None = None
    seed: int = 0
    genes: list[str] | None = None
    genes_file: Path | None = None
    top_genes: int = 50
    regressor: str = "ridge"
    pca: bool = True
    n_components: int = 256
    group_by_sample: bool = False
    hest_exact: bool = False
    inputs: list[Path] = field(default_factory=list)
    stores: list[StoreSpec] = field(default_factory=list)
    out_dir: Path = Path("st_results")
    meta: Path | None = None
    drop_bad_spots: bool = False
    device: str = "auto"
    batch_size: int = 64
    workers: int = 0
    bench: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.inputs = [Path(p) for p in self.inputs]
        self.out_dir = Path(self.out_dir)
        for path in self.inputs:
            _check(path.exists(), f"{path}: no such file or folder; pass a cohort folder, .h5ad files or a "
                                  "HEST-Benchmark task folder")
        self.bench = len(self.inputs) == 1 and is_bench_task(self.inputs[0])
        if self.bench:
            _check(self.split in (None, "hest-bench") and not self.compare,
                   f"{self.inputs[0]} is a HEST-Benchmark task with fixed splits; drop --split/--compare")
            _check(self.folds is None, f"{self.inputs[0]}: HEST-Benchmark splits are fixed; drop --folds")
            _check(self.meta is None, f"{self.inputs[0]} is a HEST-Benchmark task; drop --meta")
            self.split = "hest-bench"
        elif any(p.is_dir() and is_bench_task(p) for p in self.inputs):
            raise UsageError("a HEST-Benchmark task folder is evaluated alone: pass one task folder per run")
        self.split = self.split or "patient"
        splits = list(self.compare) if self.compare else [self.split]
        for s in splits:
            _check(s in SPLITS or (s == "hest-bench" and self.bench),
                   f"--split/--compare {s!r} is unknown; use one of {', '.join(SPLITS)}")
        _check(len(set(splits)) == len(splits), f"--compare {','.join(splits)} names a split twice")
        self.compare = splits if self.compare else None
        _check(self.folds is None or self.folds >= 2, f"--folds {self.folds}: needs at least 2 folds")
        _check(self.top_genes >= 1, f"--top-genes {self.top_genes}: must be at least 1")
        _check(self.n_components >= 1, f"n_components {self.n_components}: must be at least 1")
        _check(self.regressor in REGRESSORS,
               f"--regressor {self.regressor!r} is unknown; use one of {', '.join(REGRESSORS)}")
        _check(not self.hest_exact or (self.regressor == "ridge" and self.pca),
               "--hest-exact is HEST's PCA + ridge: drop --regressor/--no-pca, or drop --hest-exact")
        _check(self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1")
        _check(self.workers >= 0, f"--workers {self.workers}: must be 0 or more")
        _check(self.meta is None or Path(self.meta).is_file(),
               f"--meta {self.meta}: file not found; pass the metadata CSV (sample_id, patient, study)")
        _check(not self.out_dir.is_file(), f"--out {self.out_dir} is a file; pass a folder for the results")
        if self.genes_file is not None:
            _check(self.genes is None, "give the genes once: a list or --genes FILE, not both")
            self.genes = read_gene_list(Path(self.genes_file))
        if self.genes is not None:
            _check(len(self.genes) > 0, "the gene list is empty; give at least one gene")
            _check(len(set(self.genes)) == len(self.genes), "a gene is listed twice; list each once")
        _check(not self.inputs or bool(self.stores),
               "no model given: pass --model NAME, --models a,b or --store PATH")

    @property
    def splits(self) -> list[str]:
        """The splits to evaluate, in order."""
        return list(self.compare) if self.compare else [str(self.split)]


@dataclass
class STResult(JobResult, job="st"):
    """Everything `mvh eval st` reports; results.json is exactly `to_dict()`."""

    settings: dict[str, Any]
    models: dict[str, dict[str, Any]]
    samples: list[dict[str, Any]]
    stores: dict[str, dict[str, Any]]
    embedding: dict[str, list[dict[str, Any]]]
    dropped_spots: list[dict[str, Any]]
    n_spots_without_embedding: int
    notes: list[str]
    figures: list[str] = field(default_factory=list)
    prediction_tables: list[str] = field(default_factory=list)


def _note(progress: Progress | None, notes: list[str], text: str) -> None:
    notes.append(text)
    report(progress, Event.NOTE, "st", 0, text)


def _load_inputs(
    config: STConfig, progress: Progress | None, notes: list[str]
) -> tuple[STConfig, list[STSample], STExpression, BenchTask | None]:
    """(config, samples, expression, task) for a HEST-style cohort or a HEST-Benchmark task (its genes)."""
    if config.bench:
        task = read_bench_task(config.inputs[0], config.genes_file)
        if config.genes is None:
            config = replace(config, genes=task.genes)
        _note(progress, notes, f"HEST-Benchmark task {task.root.name}: {len(task.folds)} fixed splits, "
                               f"{len(config.genes)} genes from {task.genes_file.name}, every patch of each "
                               "patches file (no in_tissue filter), as HEST")
        barcodes = {s.sample_id: read_patches_index(s.patches)[0].tolist() for s in task.samples}
        return config, task.samples, load_expression(task.samples, barcodes), task
    samples, sample_notes = find_samples(config.inputs, config.meta)
    for text in sample_notes:
        _note(progress, notes, text)
    check_split_metadata(samples, config.splits)
    return config, samples, load_expression(samples), None


def run_st(config: STConfig, *, progress: Progress | None = None) -> STResult:
    """The whole `mvh eval st` job: samples -> embeddings (reused or embedded) -> folds -> results.json,
    then the figures (results.json is written first and rewritten with the figure list)."""
    if not config.stores:
        raise UsageError("no model given: pass --model NAME, --models a,b or --store PATH")
    notes: list[str] = []
    config, samples, expr, task = _load_inputs(config, progress, notes)
    stores_info: dict[str, dict[str, Any]] = {}
    embedding: dict[str, list[dict[str, Any]]] = {}
    per_store: dict[str, dict[str, np.ndarray]] = {}
    plans: list[SpotTiles] = []
    dropped: list[dict[str, Any]] = []
    geometry = None
    for spec in config.stores:
        label, store, factory = open_spec(spec, config.device)
        if label in per_store:
            label = f"{label}@{Path(spec.uri).stem}"
        fp = store.fingerprint
        if (fp.mpp, fp.tile_px) != geometry:
            # Spot tiles are cut at each store's geometry; the bad spots do not depend on it.
            plans, dropped = _plan(samples, expr, fp.mpp, fp.tile_px, config.drop_bad_spots)
            geometry = (fp.mpp, fp.tile_px)
        per_store[label], sync = sync_store(plans, store, factory, batch_size=config.batch_size,
                                            workers=config.workers, progress=progress)
        for text in sync.notes:
            _note(progress, notes, text)
        embedding[label] = sync.samples
        stores_info[label] = {"uri": store.uri, "fingerprint": fp.describe(),
                              "weights_sha256": fp.weights_sha256, "snapshot": store.snapshot()}
    if dropped:
        _note(progress, notes, f"--drop-bad-spots: dropped {len(dropped)} spot(s) with bad coordinates "
                               "(listed under dropped_spots in results.json)")
    embeddings, keep = _align(expr.spots, plans, per_store, dropped)
    missing = int((~keep).sum()) - len(dropped)
    if missing:
        _note(progress, notes, f"{missing} spot(s) have no patch in the patches file and are left out")
    if not keep.any():
        raise DataError("no spot has an embedding in every store; check the barcodes of the patches files")
    rows = np.flatnonzero(keep)
    expr = expr.subset(rows)
    embeddings = {k: v[rows] for k, v in embeddings.items()}
    fixed = bench_folds(task, expr.spots) if task is not None else None
    evaluation, held = evaluate_st(embeddings, expr.counts, expr.genes, expr.spots, config,
                                   progress=progress, fixed_folds=fixed)
    for text in evaluation["notes"]:
        _note(progress, notes, text)
    if config.hest_exact:
        _note(progress, notes, "--hest-exact: HEST's randomized PCA and lsqr ridge; predictions are HEST's "
                               "(no intercept), so MAE/MSE are of uncentred predictions")
    result = STResult(
        settings={**evaluation["settings"], "drop_bad_spots": config.drop_bad_spots,
                  "inputs": [str(p) for p in config.inputs], "meta": config.meta},
        models=evaluation["models"],
        samples=[{"sample_id": s.sample_id, "patient": s.patient, "patient_source": s.patient_source,
                  "study": s.study, "mpp": s.mpp, "mpp_source": s.mpp_source or "slide metadata"}
                 for s in samples],
        stores=stores_info, embedding=embedding, dropped_spots=dropped,
        n_spots_without_embedding=missing, notes=notes,
    )
    out = config.out_dir
    result.prediction_tables = [str(p) for p in _prediction_tables(held, out)]
    result.write_json(out / "results.json")
    result.figures = [str(p) for p in _figures(result, held, samples, out)]
    result.write_json(out / "results.json")
    return result


def _plan(
    samples: Sequence[STSample], expr: STExpression, mpp: float, tile_px: int, drop_bad: bool
) -> tuple[list[SpotTiles], list[dict[str, Any]]]:
    plans, dropped = [], []
    groups = expr.spots.groupby("sample_id", sort=False).indices
    for sample in samples:
        spots = expr.spots.iloc[groups[sample.sample_id]]
        plan, bad = plan_spot_tiles(sample, spots, mpp, tile_px, drop_bad)
        plans.append(plan)
        dropped += bad
    return plans, dropped


def _align(
    spots: pd.DataFrame, plans: Sequence[SpotTiles], per_store: dict[str, dict[str, np.ndarray]],
    dropped: list[dict[str, Any]],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each store's embeddings aligned with `spots` rows, and which rows have one (dropped spots: none)."""
    key = pd.MultiIndex.from_arrays([spots["sample_id"].astype(str), spots["barcode"].astype(str)])
    plan_key = pd.MultiIndex.from_arrays([
        np.concatenate([[p.sample.sample_id] * len(p.barcodes) for p in plans]).astype(str),
        np.concatenate([p.barcodes.astype(str) for p in plans]),
    ])
    position = plan_key.get_indexer(key)
    bad = pd.MultiIndex.from_tuples([(d["sample_id"], d["barcode"]) for d in dropped]) if dropped else None
    keep = position >= 0
    if bad is not None:
        keep &= ~key.isin(bad)
    out = {}
    for label, by_sample in per_store.items():
        stacked = np.concatenate([by_sample[p.sample.sample_id] for p in plans])
        X = np.zeros((len(spots), stacked.shape[1]), np.float32)
        X[keep] = stacked[position[keep]]
        out[label] = X
    return out, keep


def _prediction_tables(held: list[HeldOut], out: Path) -> list[Path]:
    """`predictions_<model>_<split>.csv`: per held-out spot (level-0 centre) the predicted log1p expression
    of every gene, for viewers (`mvh serve --results`) and for re-plotting."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for h in held:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{h.model}_{h.split}")
        table = pd.DataFrame({"sample_id": h.sample_id, "x": h.xy[:, 0], "y": h.xy[:, 1]})
        table = pd.concat([table, pd.DataFrame(h.predicted, columns=list(h.genes))], axis=1)
        path = path_inside(out, f"predictions_{name}.csv")
        table.to_csv(path, index=False)
        paths.append(path)
    return paths


def _figures(result: STResult, held: list[HeldOut], samples: Sequence[STSample], out: Path) -> list[Path]:
    figures = []
    for split in result.settings["splits"]:
        per_model = {m: result.models[m][split]["genes"] for m in result.models}
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
    return figures

