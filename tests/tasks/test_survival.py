"""Survival protocol: cohort validation, patient folds, planted-signal ABMIL, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mvh.errors import CohortError
from mvh.tasks.survival import (
    SurvivalSettings,
    cross_validate_survival,
    inner_split,
    patient_folds,
    predict_abmil,
    read_cohort,
    train_abmil,
)
from mvh.tasks.survival.metrics import harrell_c

DIM = 32
EPOCHS = 12
FAST = {"hidden_dim": 32, "attn_dim": 16, "lr": 2e-3, "batch_size": 16, "max_tiles": None, "patience": 5}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


Planted = tuple[dict[str, np.ndarray], pd.DataFrame, dict[str, np.ndarray]]


def planted_cohort(n: int = 60, seed: int = 0) -> Planted:
    """Bags of 20-200 tiles from clusters A and B; hazard exp(6 * fraction of B); ~30% random censoring."""
    rng = np.random.default_rng(seed)
    centre_a, centre_b = rng.normal(size=DIM), rng.normal(size=DIM)
    bags, is_b, frac = {}, {}, []
    for i in range(n):
        k = int(rng.integers(20, 201))
        b = rng.random(k) < rng.uniform(0.0, 1.0)
        pid = f"p{i:03d}"
        tiles = np.where(b[:, None], centre_b, centre_a) + rng.normal(0, 0.5, (k, DIM))
        bags[pid] = tiles.astype(np.float32)
        is_b[pid] = b
        frac.append(b.mean())
    t_event = rng.exponential(1.0 / np.exp(6.0 * np.asarray(frac)))
    censored = rng.random(n) < 0.3
    time = np.where(censored, t_event * rng.uniform(0, 1, n), t_event)
    patients = pd.DataFrame({"patient_id": list(bags), "time": time, "event": (~censored).astype(int)})
    return bags, patients, is_b


@pytest.fixture(scope="module")
def planted() -> Planted:
    return planted_cohort()


# ------------------------------------------------------------------------------------------ cohort CSV
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cohort.csv"
    path.write_text(text)
    return path


GOOD = "slide_id,patient_id,time,event\ns1,P1,10,1\ns2,P1,10,1\ns3,P2,5.5,0\n"


def test_read_cohort_groups_slides_by_patient(tmp_path: Path) -> None:
    cohort = read_cohort(_write(tmp_path, GOOD), available=["s1", "s2", "s3", "other"])
    assert cohort.slides_by_patient() == {"P1": ["s1", "s2"], "P2": ["s3"]}
    expected = [["P1", 10.0, 1], ["P2", 5.5, 0]]
    assert cohort.patients[["patient_id", "time", "event"]].values.tolist() == expected
    assert not cohort.has_site and cohort.skipped_slides == ()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("slide_id,patient_id,time\ns1,P1,3\n", "missing column.*event"),
        ("slide_id,patient_id,time,event\ns1,P1,-2,1\n", "negative time.*s1"),
        ("slide_id,patient_id,time,event\ns1,P1,abc,1\n", "time is not a finite number.*s1"),
        ("slide_id,patient_id,time,event\ns1,P1,3,2\n", "event must be 0.*s1=2"),
        ("slide_id,patient_id,time,event\ns1,P1,3,1\ns2,P1,4,1\n", "patient.*P1.*different"),
        ("slide_id,patient_id,time,event\ns1,P1,3,1\ns1,P2,3,1\n", "s1.*several rows"),
        ("slide_id,patient_id,time,event\n,P1,3,1\n", "empty slide_id on line"),
        ("slide_id,patient_id,time,event\n", "no rows"),
        ("slide_id,patient_id,time,event\ns1,P1,3,1\n../x,P2,3,1\n", "line 3: slide id '../x'"),
        ("slide_id,patient_id,time,event\n/abs/x,P1,3,1\n", "line 2: slide id '/abs/x' contains a path"),
    ],
)
def test_read_cohort_rejects_bad_tables(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(CohortError, match=match) as info:
        read_cohort(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_cohort_lists_slides_absent_from_the_store(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    with pytest.raises(CohortError, match=r"2 slide\(s\) are not in the store: s2, s3.*--skip-missing"):
        read_cohort(path, available=["s1"])
    cohort = read_cohort(path, available=["s1"], skip_missing=True)
    assert cohort.skipped_slides == ("s2", "s3") and cohort.dropped_patients == ("P2",)
    assert cohort.slides_by_patient() == {"P1": ["s1"]}


def test_read_cohort_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="no such cohort file"):
        read_cohort(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------------ folds
def test_folds_never_split_a_patient_and_are_stratified(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(40):
        t, e, site = float(rng.exponential(5)), int(rng.random() < 0.6), "AB"[p % 2]
        rows += [(f"P{p}_s{j}", f"P{p}", t, e, site) for j in range(int(rng.integers(1, 4)))]
    table = pd.DataFrame(rows, columns=["slide_id", "patient_id", "time", "event", "site"])
    table.to_csv(tmp_path / "c.csv", index=False)
    cohort = read_cohort(tmp_path / "c.csv")
    pats = cohort.patients
    folds, notes = patient_folds(pats["event"].to_numpy(), pats["site"].to_numpy(), 4, seed=0)
    assert notes == []
    test_of = {}
    for fold in folds:
        assert not set(fold.train) & set(fold.test)
        for i in fold.test:
            assert pats["patient_id"][i] not in test_of
            test_of[pats["patient_id"][i]] = fold.index
    assert len(test_of) == len(pats)
    slide_fold = cohort.slides.assign(fold=cohort.slides["patient_id"].map(test_of))
    assert (slide_fold.groupby("patient_id")["fold"].nunique() == 1).all()
    events = [int(pats["event"].to_numpy()[f.test].sum()) for f in folds]
    assert max(events) - min(events) <= 1
    fit, val = inner_split(pats["event"].to_numpy()[folds[0].train], 0.25, seed=0)
    assert not set(fit) & set(val) and len(fit) + len(val) == len(folds[0].train)


def test_too_few_events_for_the_folds() -> None:
    with pytest.raises(CohortError, match="2 events.*lower --folds"):
        patient_folds(np.array([1, 1, 0, 0, 0, 0]), None, 3)


def test_fold_fallbacks_are_notes_not_silent() -> None:
    folds, notes = patient_folds(np.array([1] * 10 + [0]), None, 3)
    assert len(folds) == 3 and notes and "not stratified by event" in notes[0]
    site = np.array(["A"] * 10 + ["B"] * 2)
    _, notes = patient_folds(np.array([1, 0] * 6), site, 3)
    assert notes and "stratified by event only" in notes[0]


def test_too_few_training_events_for_the_coxph_inner_cv_fail_before_training(planted, monkeypatch) -> None:
    bags, patients, _ = planted
    few = patients.iloc[:20].assign(event=[1] * 6 + [0] * 14)
    monkeypatch.setattr("mvh.tasks.survival.cv.train_abmil", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(CohortError, match="fewer than --coxph-folds 5.*lower --coxph-folds"):
        cross_validate_survival(bags, few, SurvivalSettings(folds=3, **FAST))


def test_unstratified_coxph_inner_folds_are_a_recorded_note(planted) -> None:
    bags, patients, _ = planted
    mostly_events = patients.iloc[:24].assign(event=[1] * 21 + [0] * 3)
    cv = cross_validate_survival(bags, mostly_events, SurvivalSettings(folds=3, epochs=1, **FAST))
    assert any("CoxPH inner folds are not stratified by event" in n for n in cv.notes), cv.notes


def test_no_validation_split_is_a_recorded_note(planted) -> None:
    bags, patients, _ = planted
    cv = cross_validate_survival(bags, patients.iloc[:15], SurvivalSettings(folds=3, epochs=1, coxph_folds=2,
                                                                            **FAST))
    assert any("without early stopping" in n for n in cv.notes), cv.notes
    assert not any(f.early_stopping for f in cv.folds) and all(f.epochs_run == 1 for f in cv.folds)


# ------------------------------------------------------------------------------------------ planted signal
def test_abmil_finds_the_planted_signal_and_attends_to_cluster_b(planted) -> None:
    bags, patients, is_b = planted
    config = SurvivalSettings(epochs=EPOCHS, **FAST)
    cv = cross_validate_survival(bags, patients, config, attention_for=list(bags))
    abmil = cv.c_index("abmil")
    assert abmil.mean >= 0.7, abmil
    assert len(abmil.folds) == 5 and np.std(abmil.folds) == pytest.approx(abmil.std)
    for fold in range(5):
        rows = cv.patients[cv.patients["fold"] == fold]
        expected = harrell_c(rows["event"], rows["time"], rows["risk_abmil"])
        assert abmil.folds[fold] == pytest.approx(expected)
    assert cv.c_index("coxph").mean > 0.6
    assert (cv.patients["fold"] >= 0).all() and cv.patients["risk_abmil"].notna().all()
    frac_b = np.array([is_b[p].mean() for p in cv.patients["patient_id"]])
    high = [p for p, f in zip(cv.patients["patient_id"], frac_b, strict=True) if 0.5 < f < 0.98]
    gaps = [cv.attention[p][is_b[p]].mean() - cv.attention[p][~is_b[p]].mean() for p in high]
    assert np.mean(gaps) > 0 and np.mean(np.array(gaps) > 0) >= 0.8


def test_nll_loss_also_finds_the_signal(planted) -> None:
    bags, patients, _ = planted
    cv = cross_validate_survival(bags, patients, SurvivalSettings(loss="nll", epochs=EPOCHS, **FAST))
    assert cv.c_index("abmil").mean >= 0.7


def test_shuffled_labels_stay_near_chance(planted) -> None:
    bags, patients, _ = planted
    scores = []
    for seed in range(1, 5):
        perm = np.random.default_rng(seed).permutation(len(patients))
        shuffled = patients.assign(
            time=patients["time"].to_numpy()[perm], event=patients["event"].to_numpy()[perm]
        )
        cv = cross_validate_survival(bags, shuffled, SurvivalSettings(epochs=EPOCHS, **FAST))
        scores.append(cv.c_index("abmil").mean)
    assert abs(np.mean(scores) - 0.5) < 0.1 and max(scores) < 0.65, scores


def test_same_seed_gives_identical_results(planted) -> None:
    bags, patients, _ = planted
    subset = patients.iloc[:30]
    fast = {**FAST, "max_tiles": 16}
    config = SurvivalSettings(epochs=3, folds=3, **fast)
    first = cross_validate_survival(bags, subset, config)
    second = cross_validate_survival(bags, subset, config)
    np.testing.assert_array_equal(first.patients["risk_abmil"], second.patients["risk_abmil"])
    np.testing.assert_array_equal(first.patients["risk_coxph"], second.patients["risk_coxph"])
    assert first.c_index("abmil") == second.c_index("abmil") and first.folds == second.folds
    other = cross_validate_survival(bags, subset, SurvivalSettings(epochs=3, folds=3, seed=1, **fast))
    assert not np.array_equal(first.patients["risk_abmil"], other.patients["risk_abmil"])


def test_max_tiles_samples_training_bags_only(planted) -> None:
    bags, patients, _ = planted
    ids = patients["patient_id"].tolist()[:20]
    config = SurvivalSettings(epochs=1, **{**FAST, "max_tiles": 4})
    model, report = train_abmil([bags[p] for p in ids], patients["time"][:20], patients["event"][:20], config)
    _, attention = predict_abmil(model, [bags[p] for p in ids], "cox", torch.device("cpu"))
    assert [len(a) for a in attention] == [len(bags[p]) for p in ids]
    assert report.epochs_run == 1
