"""The `mvh eval survival` job: `run_survival(SurvivalConfig(...)) -> SurvivalResult` (results.json).

Order of work, so that nothing computed is lost: the cohort, the store and the `--heatmap` slide (in the
cohort, in the store, its file readable) are checked first; then the bags are read in one store scan,
the cross-validation runs, results.json is written, and only then are the figures drawn. A figure that
fails is recorded in results.json (`figure_errors`) and printed; the numbers stay on disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvh.core.device import resolve_device
from mvh.errors import CohortError, MvhError, SlideError, UsageError
from mvh.extractor.slide import open_slide
from mvh.jobs import JobResult, check_out_folder, out_folder
from mvh.progress import FOLDS, Event, Progress, report
from mvh.store import EmbeddingStore
from mvh.store.slide_ids import check_slide_id, path_inside
from mvh.tasks.survival.bags import StoreBags
from mvh.tasks.survival.cohort import REQUIRED_COLUMNS, Cohort, listing, read_cohort
from mvh.tasks.survival.cv import FoldResult, Stats, SurvivalCV, cross_validate_survival
from mvh.tasks.survival.figures import plot_attention_heatmap, plot_km
from mvh.tasks.survival.km import HIGH, LOW, logrank_p
from mvh.tasks.survival.settings import MODELS, SurvivalSettings

RESULTS_NAME = "results.json"
DEFINITIONS = {
    "c_index": "Harrell's C per test fold, equal to sksurv.metrics.concordance_index_censored(event, time, "
               "risk) with its tie tolerance 1e-8 (risks within 1e-8 are tied and count 1/2; lifelines ties "
               "only exactly equal risks; a pair tied in time is comparable when one is an event and the "
               "other censored); mean +- std over folds, std with ddof=0 (not the standard error that "
               "Patho-Bench reports)",
    "uno_c": "Uno's IPCW C per test fold (sksurv concordance_index_ipcw), censoring estimated on the fold's "
             "training patients, tau = their largest time",
    "km_split": "each fold's test patients are high risk when their risk is above the median risk that the "
                "same fold's model gives that fold's training patients (not the median of pooled "
                "out-of-fold risks: risks of different folds carry per-fold offsets); the groups of all "
                "folds are pooled for the Kaplan-Meier curves and the log-rank test (lifelines)",
    "coxph": "sksurv CoxnetSurvivalAnalysis (elastic net, l1_ratio) on standardised mean-pooled tile "
             "embeddings; penalty = best mean Harrell's C over coxph_folds inner folds of each training "
             "fold (strongest penalty on ties), predicted by the path fitted on the whole training fold",
    "abmil": "gated-attention MIL, AdamW, early stopping on the loss of an inner validation split "
             "(val_fraction of the training fold, stratified by event); the test fold is never used",
}


@dataclass(frozen=True)
class SurvivalConfig:
    """One survival evaluation: inputs, outputs and protocol settings (validated on construction)."""

    cohort: Path
    store: str
    out: Path = Path("results")
    settings: SurvivalSettings = field(default_factory=SurvivalSettings)
    skip_missing: bool = False
    heatmap: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cohort", Path(self.cohort))
        object.__setattr__(self, "store", str(self.store))
        object.__setattr__(self, "out", out_folder(self.out, RESULTS_NAME))
        if self.heatmap is not None:
            check_slide_id(self.heatmap, "--heatmap")


@dataclass
class ModelResult:
    """One model's cross-validated scores and its Kaplan-Meier split."""

    c_index: Stats
    uno_c: Stats
    logrank_p: float | None
    n_high: int
    n_low: int


@dataclass
class PatientResult:
    """One patient's outcome, test fold, out-of-fold risks and KM group per model."""

    patient_id: str
    time: float
    event: int
    fold: int
    risk: dict[str, float | None]
    group: dict[str, str | None]


@dataclass
class CohortSummary:
    """What was read: the cohort, the store and what was left out."""

    cohort: Path
    store: str
    store_snapshot: dict[str, Any]
    fingerprint: dict[str, Any]
    n_patients: int
    n_slides: int
    n_events: int
    n_tiles: int
    skip_missing: bool
    skipped_slides: list[str]
    dropped_patients: list[str]


@dataclass
class SurvivalResult(JobResult, job="survival"):
    """results.json of `mvh eval survival` (exactly `to_dict()`)."""

    settings: SurvivalSettings
    device: str
    cohort: CohortSummary
    abmil: ModelResult
    coxph: ModelResult
    folds: list[FoldResult]
    patients: list[PatientResult]
    definitions: dict[str, str]
    notes: list[str]
    heatmap: str | None
    tables: dict[str, Path]
    figures: dict[str, Path]
    figure_errors: dict[str, str]
    seconds: dict[str, float]

    def model(self, name: str) -> ModelResult:
        """The result of model `name` (one of MODELS)."""
        return {"abmil": self.abmil, "coxph": self.coxph}[name]


@dataclass(frozen=True)
class HeatmapSource:
    """The --heatmap slide, checked before training: its patient, file and mpp."""

    slide_id: str
    patient_id: str
    path: Path
    mpp: float | None


def check_heatmap_slide(store: EmbeddingStore, cohort: Cohort, slide_id: str) -> HeatmapSource:
    """Check that the --heatmap slide is in the cohort, done in the store, and its file opens."""
    match = cohort.slides.loc[cohort.slides["slide_id"] == slide_id, "patient_id"]
    if match.empty:
        raise UsageError(
            f"--heatmap {slide_id}: not a slide of the cohort (after skipping); pick one of its slides"
        )
    row = store.slides().set_index("slide_id").loc[slide_id]
    if row.get("path") is None or pd.isna(row["path"]):
        raise SlideError(
            f"--heatmap {slide_id}: store {store.uri} records no file path for it; drop --heatmap"
        )
    path = Path(str(row["path"]))
    if not path.exists():
        raise SlideError(
            f"--heatmap {slide_id}: slide file {path} is gone; restore it at that path or drop --heatmap"
        )
    mpp = None if pd.isna(row.get("mpp")) else float(row["mpp"])
    try:
        with open_slide(path, mpp=mpp) as slide:
            slide.thumbnail(64)
    except SlideError as exc:
        raise SlideError(f"--heatmap {slide_id}: {exc}; fix the file or drop --heatmap") from exc
    return HeatmapSource(slide_id, str(match.iloc[0]), path, mpp)


def write_attention_table(out: Path, bags: StoreBags, source: HeatmapSource, attention: np.ndarray) -> Path:
    """Write attention_<slide>.csv: slide_id, level-0 x, y (tile top-left) and out-of-fold ABMIL attention."""
    start, stop = bags.slide_span(source.patient_id, source.slide_id)
    coords = bags.slide_coords(source.slide_id)
    target = path_inside(out, f"attention_{source.slide_id}.csv")
    table = {"slide_id": source.slide_id, "x": coords[:, 0], "y": coords[:, 1]}
    pd.DataFrame({**table, "attention": attention[start:stop]}).to_csv(target, index=False)
    return target


def draw_heatmap(
    out: Path, store: EmbeddingStore, bags: StoreBags, source: HeatmapSource, attention: np.ndarray,
    risk: float,
) -> Path:
    """Draw out-of-fold attention [N_patient] of the heatmap slide over its thumbnail; return the PNG."""
    start, stop = bags.slide_span(source.patient_id, source.slide_id)
    tiles = store.slide_tiles(source.slide_id)
    coords = tiles[["x", "y"]].to_numpy(np.int64)
    if not np.array_equal(coords, bags.slide_coords(source.slide_id)):
        raise SlideError(f"--heatmap {source.slide_id}: the store changed during the run; run again")
    with open_slide(source.path, mpp=source.mpp) as slide:
        footprint = tiles["tile_px"].to_numpy(np.float64) * tiles["mpp"].to_numpy(np.float64) / slide.mpp
        target = path_inside(out, f"heatmap_{source.slide_id}.png")
        plot_attention_heatmap(
            target, slide.thumbnail(1024), slide.dimensions, coords, footprint, attention[start:stop],
            title=f"{source.slide_id} (patient {source.patient_id}, out-of-fold ABMIL risk {risk:.3g})",
        )
    return target


def _model_result(cv: SurvivalCV, model: str) -> ModelResult:
    frame = cv.patients
    groups = frame[f"group_{model}"].to_numpy()
    p = logrank_p(frame["time"].to_numpy(), frame["event"].to_numpy(), groups)
    return ModelResult(cv.c_index(model), cv.uno_c(model), None if np.isnan(p) else p,
                       int((groups == HIGH).sum()), int((groups == LOW).sum()))


def _patients(cv: SurvivalCV) -> list[PatientResult]:
    names = {HIGH: "high", LOW: "low"}
    rows = []
    for r in cv.patients.to_dict("records"):
        rows.append(PatientResult(
            str(r["patient_id"]), float(r["time"]), int(r["event"]), int(r["fold"]),
            {m: None if np.isnan(r[f"risk_{m}"]) else float(r[f"risk_{m}"]) for m in MODELS},
            {m: names.get(int(r[f"group_{m}"])) for m in MODELS},
        ))
    return rows


def run_survival(config: SurvivalConfig, *, progress: Progress | None = None) -> SurvivalResult:
    """Validate the inputs, cross-validate ABMIL and CoxPH, write results.json, then draw the figures."""
    started = time.perf_counter()
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        report(progress, Event.NOTE, FOLDS, detail=text)

    if not config.cohort.is_file():
        raise CohortError(
            f"--cohort {config.cohort}: no such cohort file; pass a CSV with columns "
            f"{', '.join(REQUIRED_COLUMNS)}"
        )
    check_out_folder(config.out)
    store = EmbeddingStore.open_snapshot(config.store)
    cohort = read_cohort(config.cohort, store.slide_ids(), skip_missing=config.skip_missing)
    if cohort.skipped_slides:
        note(f"skipped {len(cohort.skipped_slides)} slide(s) absent from the store: "
             f"{listing(cohort.skipped_slides)}")
    if cohort.dropped_patients:
        note(f"dropped {len(cohort.dropped_patients)} patient(s) left without slides: "
             f"{listing(cohort.dropped_patients)}")
    heat = check_heatmap_slide(store, cohort, config.heatmap) if config.heatmap else None
    config.out.mkdir(parents=True, exist_ok=True)
    results_path = path_inside(config.out, RESULTS_NAME)

    loading = time.perf_counter()
    bags = StoreBags.load(store, cohort.slides_by_patient(), progress=progress)
    training = time.perf_counter()
    cv = cross_validate_survival(
        bags, cohort.patients, config.settings, attention_for=[heat.patient_id] if heat else (),
        progress=progress,
    )
    notes.extend(cv.notes)
    finished = time.perf_counter()
    result = SurvivalResult(
        settings=config.settings,
        device=str(resolve_device(config.settings.device)),
        cohort=CohortSummary(
            cohort=config.cohort, store=store.uri, store_snapshot=store.snapshot(),
            fingerprint=store.fingerprint.to_dict(),
            n_patients=len(cohort.patients), n_slides=len(cohort.slides),
            n_events=int(cohort.patients["event"].sum()), n_tiles=len(bags.embeddings),
            skip_missing=config.skip_missing, skipped_slides=list(cohort.skipped_slides),
            dropped_patients=list(cohort.dropped_patients),
        ),
        abmil=_model_result(cv, "abmil"),
        coxph=_model_result(cv, "coxph"),
        folds=cv.folds,
        patients=_patients(cv),
        definitions=dict(DEFINITIONS),
        notes=notes,
        heatmap=config.heatmap,
        tables={},
        figures={},
        figure_errors={},
        seconds={"validate": loading - started, "load_bags": training - loading,
                 "cross_validation": finished - training},
    )
    if heat is not None:
        attention = cv.attention[heat.patient_id]
        result.tables["attention"] = write_attention_table(config.out, bags, heat, attention)
    result.write_json(results_path)

    frame = cv.patients
    time_, event = frame["time"].to_numpy(), frame["event"].to_numpy()
    for m in MODELS:
        try:
            target = path_inside(config.out, f"km_{m}.png")
            p = result.model(m).logrank_p
            plot_km(target, time_, event, frame[f"group_{m}"].to_numpy(), np.nan if p is None else p,
                    title=f"{m}: test folds split at their training median risk")
            result.figures[f"km_{m}"] = target
        except (MvhError, OSError) as exc:
            result.figure_errors[f"km_{m}"] = " ".join(str(exc).split())
    if heat is not None:
        try:
            risk = float(frame.loc[frame["patient_id"] == heat.patient_id, "risk_abmil"].iloc[0])
            result.figures["heatmap"] = draw_heatmap(
                config.out, store, bags, heat, cv.attention[heat.patient_id], risk
            )
        except (MvhError, OSError) as exc:
            result.figure_errors["heatmap"] = " ".join(str(exc).split())
    for name, error in result.figure_errors.items():
        note(f"figure {name} failed ({error}); the numbers are in {results_path}")
    result.seconds["total"] = time.perf_counter() - started
    result.write_json(results_path)
    return result
