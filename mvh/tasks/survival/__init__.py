"""Patient-level survival from stored tile embeddings: attention MIL (ABMIL) vs a CoxPH baseline.

Modules: `cohort` (the CSV), `bags` (one store scan), `folds`, `abmil` (training), `coxph` (baseline,
penalty by inner CV), `cv` (cross-validation), `km` (risk groups), `losses`, `metrics`, `figures`,
`settings` and `job` (`run_survival(SurvivalConfig(...)) -> SurvivalResult`).
"""

from mvh.tasks.survival.abmil import TrainReport, predict_abmil, train_abmil
from mvh.tasks.survival.bags import StoreBags, mean_pool
from mvh.tasks.survival.cohort import Cohort, read_cohort
from mvh.tasks.survival.coxph import CoxphChoice, fit_coxph
from mvh.tasks.survival.cv import FoldResult, Stats, SurvivalCV, cross_validate_survival
from mvh.tasks.survival.folds import inner_folds, inner_split, patient_folds
from mvh.tasks.survival.job import SurvivalConfig, SurvivalResult, run_survival
from mvh.tasks.survival.settings import LOSSES, MODELS, SurvivalSettings

__all__ = [
    "LOSSES", "MODELS", "Cohort", "CoxphChoice", "FoldResult", "Stats", "StoreBags", "SurvivalCV",
    "SurvivalConfig", "SurvivalResult", "SurvivalSettings", "TrainReport", "cross_validate_survival",
    "fit_coxph", "inner_folds", "inner_split", "mean_pool", "patient_folds", "predict_abmil",
    "read_cohort", "run_survival", "train_abmil",
]
