"""Patient-level survival from stored tile embeddings: attention MIL (ABMIL) vs a CoxPH baseline."""

from mvh.tasks.survival._old import (
    MODELS,
    StoreBags,
    SurvivalConfig,
    cross_validate_survival,
    inner_split,
    patient_folds,
    predict_abmil,
    read_cohort,
    resolve_device,
    run_survival,
    train_abmil,
)

__all__ = [
    "MODELS", "StoreBags", "SurvivalConfig", "cross_validate_survival", "inner_split", "patient_folds",
    "predict_abmil", "read_cohort", "resolve_device", "run_survival", "train_abmil",
]
