"""Spatial-transcriptomics gene-expression regression from frozen spot embeddings (HEST protocol).

Targets are `log1p(raw counts)` of a fixed gene list, or of the top-k highly variable genes chosen on the
TRAINING spots of each fold only. The default regressor is HEST-Benchmark's own StandardScaler -> PCA(256)
-> lsqr Ridge(alpha = 100 / (n_features * n_genes), no intercept), computed as HEST's `predict_folds`
computes it (`st_model`); `ridge-exact`, `ridge-cv` and `knn` are named alternatives. Metrics per fold:
Pearson r per gene over the pooled test spots, PCC, PCC-10, MAE, MSE; mean +- population std (ddof = 0)
over folds (`st_eval`). Splits: `patient` (default, HEST: k-fold grouped by patient, k = min(5,
patients)), `random` (spot-level k-fold: the paper's reference, labelled so), `loso` (leave-one-study-out)
and `hest-bench` (a HEST-Benchmark task's fixed splits). Evaluating random and loso adds the paper's
`drop = 1 - PCC_loso / PCC_random`.

`st_eval.evaluate_st` works on arrays; `run_st(STConfig(...), progress=...)` is the whole `mvh eval st`
job: inputs read and checked -> samples -> stores -> evaluation -> results.json, then figures -> `STResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mvh.errors import DataError, UsageError
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
from mvh.tasks.st_eval import HeldOut, STProtocol, evaluate_st
from mvh.tasks.st_model import REGRESSORS
from mvh.tasks.st_result import DroppedSpot, SampleInfo, SampleSync, StoreInfo, StoreSnapshot, STResult
from mvh.tasks.st_spots import SpotTiles, plan_spot_tiles, sync_store
from mvh.tasks.stores import StoreSpec, open_spec

__all__ = ["STConfig", "STProtocol", "STResult", "evaluate_st", "run_st"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


@dataclass(frozen=True)
class STConfig:
    """Settings of one `mvh eval st` run, validated on construction (UsageError naming the flag); files are
    read and checked by `run_st`, never here.

    `split=None` means `patient` (or `hest-bench` for a HEST-Benchmark task folder); `compare` runs
    several splits on the same data; `folds=None` means min(5, patients) for patient and 5 for random.
    """

    inputs: tuple[Path, ...] = ()
    stores: tuple[StoreSpec, ...] = ()
    out_dir: Path = Path("st_results")
    meta: Path | None = None
    split: str | None = None
    compare: tuple[str, ...] | None = None
    folds: int | None = None
    seed: int = 1
    genes_file: Path | None = None
    top_genes: int = 50
    regressor: str = "ridge"
    pca: bool = True
    n_components: int = 256
    group_by_sample: bool = False
    drop_bad_spots: bool = False
    device: str = "auto"
    batch_size: int = 64
    workers: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(Path(p) for p in self.inputs))
        object.__setattr__(self, "stores", tuple(self.stores))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.compare is not None:
            object.__setattr__(self, "compare", tuple(self.compare))
        for s in self.compare or (self.split,):
            _check(s is None or s in (*SPLITS, "hest-bench"),
                   f"--split/--compare {s!r} is unknown; use one of {', '.join(SPLITS)}")
        _check(not self.compare or len(set(self.compare)) == len(self.compare),
               f"--compare {','.join(self.compare or ())} names a split twice")
        _check(self.folds is None or self.folds >= 2, f"--folds {self.folds}: needs at least 2 folds")
        _check(self.top_genes >= 1, f"--top-genes {self.top_genes}: must be at least 1")
        _check(self.n_components >= 1, f"n_components {self.n_components}: must be at least 1")
        _check(self.regressor in REGRESSORS,
               f"--regressor {self.regressor!r} is unknown; use one of {', '.join(REGRESSORS)}")
        _check(self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1")
        _check(self.workers >= 0, f"--workers {self.workers}: must be 0 or more")
        _check(bool(self.stores), "no model given: pass --model NAME, --models a,b or --store PATH")

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits to evaluate, in order (before a HEST-Benchmark task fixes them)."""
        return self.compare if self.compare else (self.split or "patient",)


@dataclass(frozen=True)
class STInputs:
    """What `run_st` read from the inputs: a HEST-Benchmark task or a cohort, and the protocol to run."""

    protocol: STProtocol
    task: BenchTask | None


def read_inputs(config: STConfig) -> STInputs:
    """Check the input files and resolve the protocol: a task's fixed splits and genes, or --genes."""
    for path in config.inputs:
        _check(path.exists(), f"{path}: no such file or folder; pass a cohort folder, .h5ad files or a "
                              "HEST-Benchmark task folder")
    _check(bool(config.inputs), "no samples given: pass a cohort folder, .h5ad files or a task folder")
    _check(config.meta is None or Path(config.meta).is_file(),
           f"--meta {config.meta}: file not found; pass the metadata CSV (sample_id, patient, study)")
    _check(not config.out_dir.is_file(), f"--out {config.out_dir} is a file; pass a folder for the results")
    bench = len(config.inputs) == 1 and is_bench_task(config.inputs[0])
    task = None
    genes = read_gene_list(Path(config.genes_file)) if config.genes_file is not None else None
    if bench:
        root = config.inputs[0]
        _check(config.split in (None, "hest-bench") and not config.compare,
               f"{root} is a HEST-Benchmark task with fixed splits; drop --split/--compare")
        _check(config.folds is None, f"{root}: HEST-Benchmark splits are fixed; drop --folds")
        _check(config.meta is None, f"{root} is a HEST-Benchmark task; drop --meta")
        task = read_bench_task(root, config.genes_file)
        splits: tuple[str, ...] = ("hest-bench",)
        genes = genes if genes is not None else task.genes
    else:
        _check(not any(p.is_dir() and is_bench_task(p) for p in config.inputs),
               "a HEST-Benchmark task folder is evaluated alone: pass one task folder per run")
        _check("hest-bench" not in config.splits, "--split hest-bench needs a HEST-Benchmark task folder")
        splits = config.splits
    protocol = STProtocol(splits=splits, folds=config.folds, seed=config.seed, genes=genes,
                          top_genes=config.top_genes, regressor=config.regressor, pca=config.pca,
                          n_components=config.n_components, group_by_sample=config.group_by_sample)
    return STInputs(protocol, task)


def _note(progress: Progress | None, notes: list[str], text: str) -> None:
    notes.append(text)
    report(progress, Event.NOTE, "st", 0, text)


def _load_inputs(
    config: STConfig, inputs: STInputs, progress: Progress | None, notes: list[str]
) -> tuple[list[STSample], STExpression]:
    """(samples, expression) of a HEST-style cohort or a HEST-Benchmark task."""
    task = inputs.task
    if task is not None:
        n_genes = len(inputs.protocol.genes or ())
        _note(progress, notes, f"HEST-Benchmark task {task.root.name}: {len(task.folds)} fixed splits, "
                               f"{n_genes} genes from {task.genes_file.name}, every patch of each "
                               "patches file (no in_tissue filter), as HEST")
        barcodes = {s.sample_id: read_patches_index(s.patches)[0].tolist() for s in task.samples}
        return task.samples, load_expression(task.samples, barcodes)
    samples, sample_notes = find_samples(list(config.inputs), config.meta)
    for text in sample_notes:
        _note(progress, notes, text)
    check_split_metadata(samples, list(inputs.protocol.splits))
    return samples, load_expression(samples)


def run_st(config: STConfig, *, progress: Progress | None = None) -> STResult:
    """The whole `mvh eval st` job: inputs -> embeddings (reused or embedded) -> folds -> results.json,
    then the figures (results.json is written first and rewritten with the figure list)."""
    notes: list[str] = []
    inputs = read_inputs(config)
    samples, expr = _load_inputs(config, inputs, progress, notes)
    stores_info: dict[str, StoreInfo] = {}
    embedding: dict[str, list[SampleSync]] = {}
    per_store: dict[str, dict[str, np.ndarray]] = {}
    plans: list[SpotTiles] = []
    dropped: list[DroppedSpot] = []
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
        stores_info[label] = StoreInfo(store.uri, fp.describe(), fp.weights_sha256,
                                       StoreSnapshot(**store.snapshot()))
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
    fixed = bench_folds(inputs.task, expr.spots) if inputs.task is not None else None
    evaluation, held = evaluate_st(embeddings, expr.counts, expr.genes, expr.spots, inputs.protocol,
                                   progress=progress, fixed_folds=fixed)
    for text in evaluation.notes:
        _note(progress, notes, text)
    if inputs.protocol.hest:
        _note(progress, notes, "regressor ridge: HEST-Benchmark's predict_folds (PCA solver per fold in "
                               "results.json); predictions have no intercept, as HEST's, so MAE/MSE are "
                               "of uncentred predictions")
    result = STResult(
        settings=replace(evaluation.settings, drop_bad_spots=config.drop_bad_spots,
                         inputs=[str(p) for p in config.inputs],
                         meta=None if config.meta is None else str(config.meta)),
        models=evaluation.models,
        samples=[SampleInfo(s.sample_id, s.patient, s.patient_source, s.study, s.mpp,
                            s.mpp_source or "slide metadata") for s in samples],
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
) -> tuple[list[SpotTiles], list[DroppedSpot]]:
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
    dropped: list[DroppedSpot],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each store's embeddings aligned with `spots` rows, and which rows have one (dropped spots: none)."""
    key = pd.MultiIndex.from_arrays([spots["sample_id"].astype(str), spots["barcode"].astype(str)])
    plan_key = pd.MultiIndex.from_arrays([
        np.concatenate([[p.sample.sample_id] * len(p.barcodes) for p in plans]).astype(str),
        np.concatenate([p.barcodes.astype(str) for p in plans]),
    ])
    position = plan_key.get_indexer(key)
    bad = pd.MultiIndex.from_tuples([(d.sample_id, d.barcode) for d in dropped]) if dropped else None
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
    for split in result.settings.splits:
        per_model = {m: r.splits[split].genes for m, r in result.models.items()}
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

