"""Survival protocol: cohort validation, patient folds, planted-signal ABMIL, determinism, store bags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mvh.errors import CohortError, SlideError
from mvh.index.store import EmbeddingStore, StoreFingerprint
from mvh.tasks.survival import (
    StoreBags,
    SurvivalConfig,
    cross_validate_survival,
    inner_split,
    patient_folds,
    predict_abmil,
    read_cohort,
    run_survival,
    train_abmil,
)
from mvh.tasks.survival_figures import attention_canvas
from mvh.tasks.survival_metrics import harrell_c

DIM = 32
EPOCHS = 12
FAST = {"hidden_dim": 32, "attn_dim": 16, "lr": 2e-3, "batch_size": 16, "max_tiles": None, "patience": 5}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    folds = patient_folds(pats["event"].to_numpy(), pats["site"].to_numpy(), 4, seed=0)
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


# ------------------------------------------------------------------------------------------ planted signal
def test_abmil_finds_the_planted_signal_and_attends_to_cluster_b(planted) -> None:
    bags, patients, is_b = planted
    config = SurvivalConfig(epochs=EPOCHS, **FAST)
    cv = cross_validate_survival(bags, patients, config, attention_for=list(bags))
    abmil = cv.summary("abmil")["c_index"]
    assert abmil["mean"] >= 0.7, abmil
    assert len(abmil["folds"]) == 5 and np.std(abmil["folds"]) == pytest.approx(abmil["std"])
    for fold in range(5):
        rows = cv.patients[cv.patients["fold"] == fold]
        expected = harrell_c(rows["event"], rows["time"], rows["risk_abmil"])
        assert abmil["folds"][fold] == pytest.approx(expected)
    assert cv.summary("coxph")["c_index"]["mean"] > 0.6
    assert (cv.patients["fold"] >= 0).all() and cv.patients["risk_abmil"].notna().all()
    frac_b = np.array([is_b[p].mean() for p in cv.patients["patient_id"]])
    high = [p for p, f in zip(cv.patients["patient_id"], frac_b, strict=True) if 0.5 < f < 0.98]
    gaps = [cv.attention[p][is_b[p]].mean() - cv.attention[p][~is_b[p]].mean() for p in high]
    assert np.mean(gaps) > 0 and np.mean(np.array(gaps) > 0) >= 0.8


def test_nll_loss_also_finds_the_signal(planted) -> None:
    bags, patients, _ = planted
    cv = cross_validate_survival(bags, patients, SurvivalConfig(loss="nll", epochs=EPOCHS, **FAST))
    assert cv.summary("abmil")["c_index"]["mean"] >= 0.7


def test_shuffled_labels_stay_near_chance(planted) -> None:
    bags, patients, _ = planted
    scores = []
    for seed in range(1, 5):
        perm = np.random.default_rng(seed).permutation(len(patients))
        shuffled = patients.assign(
            time=patients["time"].to_numpy()[perm], event=patients["event"].to_numpy()[perm]
        )
        cv = cross_validate_survival(bags, shuffled, SurvivalConfig(epochs=EPOCHS, **FAST))
        scores.append(cv.summary("abmil")["c_index"]["mean"])
    assert abs(np.mean(scores) - 0.5) < 0.1 and max(scores) < 0.65, scores


def test_same_seed_gives_identical_results(planted) -> None:
    bags, patients, _ = planted
    subset = patients.iloc[:30]
    fast = {**FAST, "max_tiles": 16}
    config = SurvivalConfig(epochs=3, folds=3, **fast)
    first = cross_validate_survival(bags, subset, config)
    second = cross_validate_survival(bags, subset, config)
    np.testing.assert_array_equal(first.patients["risk_abmil"], second.patients["risk_abmil"])
    np.testing.assert_array_equal(first.patients["risk_coxph"], second.patients["risk_coxph"])
    assert first.fold_c == second.fold_c
    other = cross_validate_survival(bags, subset, SurvivalConfig(epochs=3, folds=3, seed=1, **fast))
    assert not np.array_equal(first.patients["risk_abmil"], other.patients["risk_abmil"])


def test_max_tiles_samples_training_bags_only(planted) -> None:
    bags, patients, _ = planted
    ids = patients["patient_id"].tolist()[:20]
    config = SurvivalConfig(epochs=1, **{**FAST, "max_tiles": 4})
    model, report = train_abmil([bags[p] for p in ids], patients["time"][:20], patients["event"][:20], config)
    _, attention = predict_abmil(model, [bags[p] for p in ids], "cox", torch.device("cpu"))
    assert [len(a) for a in attention] == [len(bags[p]) for p in ids]
    assert report.epochs_run == 1


# ------------------------------------------------------------------------------------------ store
def _fingerprint(dim: int) -> StoreFingerprint:
    return StoreFingerprint(
        model="synthetic", model_config={}, weights_sha256="random-init", weights_path=None, embed_dim=dim,
        tile_px=224, mpp=0.5, mean=None, std=None,
    )


def _add(store: EmbeddingStore, slide_id: str, emb: np.ndarray, path: str | None = None) -> None:
    n = len(emb)
    tiles = pd.DataFrame({
        "tile_id": [f"{slide_id}:{i}" for i in range(n)], "x": np.arange(n) * 448, "y": np.zeros(n, int),
        "tile_px": 224, "mpp": 0.5, "tissue_fraction": 1.0,
    })
    store.add_slide({"slide_id": slide_id, "path": path, "mpp": 0.25, "width": 448 * n, "height": 448},
                    tiles, emb)


def test_store_bags_concatenate_slides_and_evict(tmp_path: Path) -> None:
    store = EmbeddingStore.create(tmp_path / "store", _fingerprint(4))
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(n, 4)).astype(np.float32) for n in (3, 5, 2))
    for sid, emb in (("s_a", a), ("s_b", b), ("s_c", c)):
        _add(store, sid, emb)
    bags = StoreBags(store, {"P1": ["s_a", "s_b"], "P2": ["s_c"]}, cache_bytes=a.nbytes + b.nbytes)
    np.testing.assert_array_equal(bags["P1"], np.concatenate([a, b]))
    np.testing.assert_array_equal(bags["P2"], c)
    np.testing.assert_array_equal(bags["P1"], np.concatenate([a, b]))
    assert list(bags) == ["P1", "P2"] and len(bags) == 2
    assert bags.slide_span("P1", "s_a") == (0, 3) and bags.slide_span("P1", "s_b") == (3, 8)
    start, stop = bags.slide_span("P1", "s_b")
    np.testing.assert_array_equal(bags["P1"][start:stop], store.slide_embeddings("s_b")[0])


def test_attention_canvas_paints_tiles_at_thumbnail_scale() -> None:
    coords = np.array([[0, 0], [500, 0]])
    canvas = attention_canvas((50, 200), (2000, 500), coords, np.array([500.0, 250.0]), np.array([0.2, 0.9]))
    assert np.all(canvas[:, :50] == 0.2) and np.all(canvas[:25, 50:75] == 0.9)
    assert np.isnan(canvas[25:, 50:75]).all() and np.isnan(canvas[:, 75:]).all()


def test_run_survival_writes_results_json(tmp_path: Path, planted) -> None:
    bags, patients, _ = planted
    store = EmbeddingStore.create(tmp_path / "store", _fingerprint(DIM))
    rows = []
    for pid, t, e in patients.iloc[:24].itertuples(index=False):
        half = len(bags[pid]) // 2
        for j, part in enumerate((bags[pid][:half], bags[pid][half:])):
            _add(store, f"{pid}_{j}", part, path=str(tmp_path / "gone.svs"))
            rows.append((f"{pid}_{j}", pid, t, e))
    cohort = tmp_path / "cohort.csv"
    pd.DataFrame(rows, columns=["slide_id", "patient_id", "time", "event"]).to_csv(cohort, index=False)
    config = SurvivalConfig(epochs=2, folds=3, **FAST)
    with pytest.raises(SlideError, match="gone.svs is gone"):
        run_survival(cohort, store.uri, config, tmp_path / "out", heatmap="p000_0")
    assert not (tmp_path / "out").exists()
    results = run_survival(cohort, store.uri, config, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["settings"]["folds"] == 3 and saved["settings"]["n_slides"] == 48
    for model in ("abmil", "coxph"):
        c = saved[model]["c_index"]
        assert len(c["folds"]) == 3 and c["mean"] == pytest.approx(np.mean(c["folds"]))
        assert c["std"] == pytest.approx(np.std(c["folds"]))
        assert (tmp_path / "out" / f"km_{model}.png").read_bytes()[:4] == b"\x89PNG"
    assert [p["patient_id"] for p in saved["patients"]] == sorted(patients["patient_id"][:24])
    assert {p["fold"] for p in saved["patients"]} == {0, 1, 2}
    assert results["abmil"] == saved["abmil"]
