"""The survival job: config validation, results.json = to_dict(), heatmap checked before training,
results.json written before any figure, and a late figure failure that keeps the numbers (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mvh.errors import CohortError, SlideError, UsageError
from mvh.progress import FOLDS, TILES, Event, Recorder
from mvh.store import EmbeddingStore
from mvh.tasks.survival import SurvivalConfig, SurvivalResult, SurvivalSettings, run_survival
from tests.conftest import synthetic_fingerprint

DIM = 8
FAST = SurvivalSettings(hidden_dim=16, attn_dim=8, lr=2e-3, epochs=2, folds=3, coxph_folds=3,
                        coxph_alphas=10, max_tiles=None)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


@pytest.fixture(scope="module")
def cohort_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """24 patients with 2 slides of 4-10 tiles each, hazard from the tiles' level; one image file as every
    slide's file (for heatmaps). Returns (cohort CSV, store dir, slide image)."""
    root = tmp_path_factory.mktemp("survival_job")
    image = root / "slide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (448, 2240, 3), dtype=np.uint8)).save(image)
    fp = synthetic_fingerprint(DIM)
    store = EmbeddingStore.create(root / "store", fp)
    rng = np.random.default_rng(1)
    rows = []
    for p in range(24):
        level = rng.normal()
        outcome = float(rng.exponential(1.0 / np.exp(level))), int(p % 4 != 0)
        for j in range(2):
            n = int(rng.integers(4, 11))
            emb = (level + rng.normal(0, 0.5, (n, DIM))).astype(np.float32)
            sid = f"p{p:02d}_{j}"
            tiles = pd.DataFrame({"tile_id": [f"{sid}:{i}" for i in range(n)], "x": (np.arange(n) % 10) * 448,
                                  "y": (np.arange(n) // 10) * 448, "tile_px": 224, "mpp": 0.5,
                                  "tissue_fraction": 1.0})
            store.add_slide({"slide_id": sid, "path": str(image), "mpp": 0.25, "width": 4480, "height": 896},
                            tiles, emb)
            rows.append((sid, f"P{p:02d}", *outcome))
    cohort = root / "cohort.csv"
    pd.DataFrame(rows, columns=["slide_id", "patient_id", "time", "event"]).to_csv(cohort, index=False)
    return cohort, root / "store", image


def test_config_validates_on_construction(cohort_store, tmp_path: Path) -> None:
    """Settings are checked when the config is built (no file read); the files when the job starts."""
    cohort, store, _ = cohort_store
    with pytest.raises(CohortError, match=r"--cohort .*nope.csv: no such cohort file"):
        run_survival(SurvivalConfig(tmp_path / "nope.csv", str(store), tmp_path / "o1"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="--out .*file is a file"):
        run_survival(SurvivalConfig(cohort, str(store), tmp_path / "file"))
    with pytest.raises(UsageError, match=r"--out .*results\.json names a file, but --out is a folder"):
        SurvivalConfig(cohort, str(store), tmp_path / "results.json")
    assert not (tmp_path / "o1").exists()
    with pytest.raises(UsageError, match="--heatmap: slide id '../x' contains a path separator"):
        SurvivalConfig(cohort, str(store), heatmap="../x")
    with pytest.raises(UsageError, match="--coxph-folds 1 is out of range"):
        SurvivalSettings(coxph_folds=1)


def test_results_json_is_to_dict_and_round_trips(cohort_store, tmp_path: Path) -> None:
    cohort, store, _ = cohort_store
    recorder = Recorder()
    result = run_survival(SurvivalConfig(cohort, str(store), tmp_path / "out", FAST), progress=recorder)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == result.to_dict()
    assert SurvivalResult.from_dict(saved).to_dict() == saved
    assert saved["cohort"]["n_patients"] == 24 and saved["cohort"]["n_slides"] == 48
    assert saved["cohort"]["store_snapshot"] == EmbeddingStore.open(store).snapshot()
    assert saved["cohort"]["n_tiles"] == recorder.count(Event.ADVANCE, TILES) > 0
    assert recorder.count(Event.TOTAL, FOLDS) == recorder.count(Event.ADVANCE, FOLDS) == 3
    assert "training patients" in saved["definitions"]["km_split"]
    for model in ("abmil", "coxph"):
        c = saved[model]["c_index"]
        assert len(c["folds"]) == 3 and c["mean"] == pytest.approx(np.mean(c["folds"]))
        assert saved[model]["n_high"] + saved[model]["n_low"] == 24
        assert Path(saved["figures"][f"km_{model}"]).read_bytes()[:4] == b"\x89PNG"
    for fold in saved["folds"]:
        assert fold["coxph"]["alpha"] > 0 and fold["coxph"]["inner_folds"] == 3
        assert set(fold["km_threshold"]) == {"abmil", "coxph"}
    assert [p["patient_id"] for p in saved["patients"]] == [f"P{i:02d}" for i in range(24)]
    assert saved["figure_errors"] == {} and saved["settings"]["coxph_folds"] == 3


@pytest.mark.parametrize("damage", ["gone", "garbage", "not_in_cohort"])
def test_heatmap_slide_is_checked_before_any_training(cohort_store, tmp_path: Path, damage, monkeypatch):
    cohort, store, _ = cohort_store
    monkeypatch.setattr("mvh.tasks.survival.job.StoreBags.load", lambda *a, **k: pytest.fail("loaded bags"))
    monkeypatch.setattr("mvh.tasks.survival.cv.train_abmil", lambda *a, **k: pytest.fail("trained"))
    slide, match = "p03_1", f"--heatmap p03_1: .*{damage}.png"
    if damage == "garbage":
        (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    if damage == "not_in_cohort":
        slide, match = "elsewhere", "--heatmap elsewhere: not a slide of the cohort"
    original = EmbeddingStore.slides

    def slides(self, status=None):
        frame = original(self, status)
        frame["path"] = str(tmp_path / f"{damage}.png")  # "gone.png" does not exist
        return frame

    monkeypatch.setattr(EmbeddingStore, "slides", slides)
    out = tmp_path / "out"
    with pytest.raises((SlideError, UsageError), match=match):
        run_survival(SurvivalConfig(cohort, str(store), out, FAST, heatmap=slide))
    assert not out.exists()


def test_results_json_is_written_before_figures_and_kept_when_the_heatmap_fails(
    cohort_store, tmp_path: Path, monkeypatch
) -> None:
    cohort, store, _ = cohort_store
    out = tmp_path / "out"
    seen = []

    def km(path, *args, **kwargs):
        saved = json.loads((out / "results.json").read_text())
        seen.append(saved["abmil"]["c_index"]["mean"])
        Path(path).write_bytes(b"\x89PNG fake")

    def broken_heatmap(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("mvh.tasks.survival.job.plot_km", km)
    monkeypatch.setattr("mvh.tasks.survival.job.plot_attention_heatmap", broken_heatmap)
    result = run_survival(SurvivalConfig(cohort, str(store), out, FAST, heatmap="p03_1"))
    assert len(seen) == 2 and seen[0] is not None
    saved = json.loads((out / "results.json").read_text())
    assert saved == result.to_dict()
    assert saved["figure_errors"] == {"heatmap": "No space left on device"}
    assert set(saved["figures"]) == {"km_abmil", "km_coxph"}
    assert any("figure heatmap failed (No space left on device)" in n for n in saved["notes"])
    assert len(saved["patients"]) == 24 and saved["abmil"]["c_index"]["mean"] == seen[0]


def test_heatmap_drawn_over_the_slide_image_and_its_attention_table(cohort_store, tmp_path: Path) -> None:
    cohort, store, _ = cohort_store
    result = run_survival(SurvivalConfig(cohort, str(store), tmp_path / "out", FAST, heatmap="p03_1"))
    target = tmp_path / "out" / "heatmap_p03_1.png"
    assert result.figures["heatmap"] == target and target.read_bytes()[:4] == b"\x89PNG"
    assert result.figure_errors == {}
    table = pd.read_csv(result.tables["attention"])
    store_tiles = EmbeddingStore.open(store).slide_tiles("p03_1")
    np.testing.assert_array_equal(table[["x", "y"]].to_numpy(), store_tiles[["x", "y"]].to_numpy())
    assert table["attention"].between(0, 1).all() and table["attention"].sum() < 1 + 1e-6
    assert list(table.columns) == ["slide_id", "x", "y", "attention"] and (table["slide_id"] == "p03_1").all()
