"""Cohort CSV: slide_id (one or more per patient), patient_id, time, event (1 = event), optional site."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvh.errors import CohortError, UsageError
from mvh.store.slide_ids import check_slide_id

REQUIRED_COLUMNS = ("slide_id", "patient_id", "time", "event")


@dataclass(frozen=True)
class Cohort:
    """A validated cohort: `slides` (slide_id, patient_id), `patients` (patient_id, time, event[, site]).

    `skipped_slides` are cohort slides absent from the store (dropped under `--skip-missing`) and
    `dropped_patients` the patients left without any slide; the job reports both.
    """

    slides: pd.DataFrame
    patients: pd.DataFrame
    skipped_slides: tuple[str, ...] = ()
    dropped_patients: tuple[str, ...] = ()

    @property
    def has_site(self) -> bool:
        """True when the cohort names a tissue source site per patient."""
        return "site" in self.patients.columns

    def slides_by_patient(self) -> dict[str, list[str]]:
        """Sorted slide ids of each patient."""
        grouped = self.slides.sort_values("slide_id").groupby("patient_id", sort=True)["slide_id"]
        return {str(pid): list(ids) for pid, ids in grouped}


def listing(values: Sequence[Any], limit: int = 8) -> str:
    """Up to `limit` values for a one-line message (values with control characters shown as repr)."""
    shown = ", ".join(str(v) if str(v).isprintable() else repr(str(v)) for v in values[:limit])
    return shown + (f" (and {len(values) - limit} more)" if len(values) > limit else "")


def read_cohort(
    path: Path, available: Collection[str] | None = None, skip_missing: bool = False
) -> Cohort:
    """Read and validate a cohort CSV (slide_id, patient_id, time, event[, site]); CohortError on problems.

    `available` are the slide ids in the store: absent slides are an error unless `skip_missing`, which
    drops them (and patients left without slides) and reports them in the returned cohort.
    """
    path = Path(path)
    if not path.is_file():
        raise CohortError(
            f"{path}: no such cohort file; pass a CSV with columns {', '.join(REQUIRED_COLUMNS)}"
        )
    try:
        table = pd.read_csv(path, dtype={"slide_id": str, "patient_id": str, "site": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise CohortError(f"{path}: not a readable CSV ({reason}); write it with a header row") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise CohortError(
            f"{path}: missing column(s) {', '.join(missing)}; the cohort needs "
            f"{', '.join(REQUIRED_COLUMNS)} (site optional)"
        )
    if table.empty:
        raise CohortError(f"{path}: the cohort has no rows; add one row per slide")
    columns = [*REQUIRED_COLUMNS, *(["site"] if "site" in table.columns else [])]
    table = table[columns].copy()
    for name in ("slide_id", "patient_id"):
        blank = table[name].isna() | (table[name].astype(str).str.strip() == "")
        if blank.any():
            rows = (np.flatnonzero(blank.to_numpy()) + 2).tolist()
            raise CohortError(f"{path}: empty {name} on line(s) {listing(rows)}; fill them in")
        table[name] = table[name].astype(str).str.strip()
    for line, slide_id in enumerate(table["slide_id"], start=2):
        try:
            check_slide_id(slide_id, f"{path} line {line}")
        except UsageError as exc:
            raise CohortError(str(exc)) from exc
    if "site" in table.columns:
        table["site"] = table["site"].fillna("").astype(str).str.strip()

    time = pd.to_numeric(table["time"], errors="coerce")
    bad = table.loc[time.isna() | ~np.isfinite(time.fillna(0.0)), "slide_id"].tolist()
    if bad:
        raise CohortError(f"{path}: time is not a finite number for slide(s) {listing(bad)}; fix those rows")
    negative = table.loc[time < 0, "slide_id"].tolist()
    if negative:
        raise CohortError(f"{path}: negative time for slide(s) {listing(negative)}; times must be >= 0")
    event = pd.to_numeric(table["event"], errors="coerce")
    bad_event = table.loc[~event.isin([0, 1]), ["slide_id", "event"]]
    if len(bad_event):
        shown = [f"{s}={e}" for s, e in bad_event.itertuples(index=False)]
        raise CohortError(
            f"{path}: event must be 0 (censored) or 1 (event); got {listing(shown)}; fix those rows"
        )
    table["time"] = time.astype(np.float64)
    table["event"] = event.astype(np.int64)

    table = table.drop_duplicates()
    dup = table.loc[table["slide_id"].duplicated(keep=False), "slide_id"].unique().tolist()
    if dup:
        raise CohortError(f"{path}: slide(s) {listing(dup)} listed on several rows with different values; "
                          "keep one row per slide")
    outcome = [c for c in ("time", "event", "site") if c in table.columns]
    conflicting = [str(pid) for pid, rows in table.groupby("patient_id", sort=True)
                   if len(rows[outcome].drop_duplicates()) > 1]
    if conflicting:
        raise CohortError(
            f"{path}: patient(s) {listing(conflicting)} have slides with different {'/'.join(outcome)}; "
            "give every slide of a patient the same outcome"
        )

    skipped: list[str] = []
    if available is not None:
        present = table["slide_id"].isin(set(available))
        skipped = sorted(table.loc[~present, "slide_id"].tolist())
        if skipped and not skip_missing:
            raise CohortError(
                f"{path}: {len(skipped)} slide(s) are not in the store: {listing(skipped)}; "
                "extract them, fix the ids, or pass --skip-missing"
            )
        before = set(table["patient_id"])
        table = table.loc[present]
        dropped = sorted(before - set(table["patient_id"]))
    else:
        dropped = []
    if table.empty:
        raise CohortError(f"{path}: none of the cohort's slides is in the store; check the slide ids")
    patients = (
        table.drop(columns="slide_id").drop_duplicates("patient_id").sort_values("patient_id")
        .reset_index(drop=True)
    )
    slides = table[["slide_id", "patient_id"]].sort_values("slide_id").reset_index(drop=True)
    return Cohort(slides, patients, tuple(skipped), tuple(dropped))
