"""`mvh eval survival` end to end on a tiny store built from the real slide (extraction pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mvh.cli import app
from mvh.extractor.extract import extract_slides
from mvh.extractor.extract_config import ExtractConfig, SlideInput
from mvh.store import EmbeddingStore

pytestmark = [pytest.mark.real_data, pytest.mark.usefixtures("one_thread")]  # tiny models: one thread
N_PATIENTS = 12




@pytest.fixture(scope="module")
def cohort_store(sample_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random-init mv_hybrid_tiny store of the real slide, re-cut into 12 'patients' of tile subsets.

    Each patient is one slide id whose tiles are a random subset of the real slide's tiles, all pointing
    at the real slide file (so heatmaps can be drawn on its thumbnail).
    """
    root = tmp_path_factory.mktemp("survival_cli")
    torch.set_num_threads(1)
    config = ExtractConfig(model="mv_hybrid_tiny", random_init=True, overrides={"depth": 2}, batch_size=32)
    extract_slides([SlideInput(sample_slide)], root / "source", config, device="cpu")
    source = EmbeddingStore.open(root / "source")
    slide_id = source.slide_ids()[0]
    emb, _ = source.slide_embeddings(slide_id)
    tiles = source.slide_tiles(slide_id)
    record = source.slides().iloc[0].to_dict()
    store = EmbeddingStore.create(root / "store", source.fingerprint)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_PATIENTS):
        sid = f"cmu_p{i:02d}"
        pick = np.sort(rng.choice(len(tiles), size=int(rng.integers(10, 30)), replace=False))
        part = tiles.iloc[pick].assign(tile_id=[f"{sid}:{t}" for t in tiles["tile_id"].iloc[pick]])
        store.add_slide({**record, "slide_id": sid}, part, emb[pick])
        rows.append((sid, f"P{i:02d}", float(rng.exponential(10.0)), int(i % 3 != 0)))
    cohort = root / "cohort.csv"
    pd.DataFrame(rows, columns=["slide_id", "patient_id", "time", "event"]).to_csv(cohort, index=False)
    return cohort, root / "store"


def _invoke(*args: str) -> object:
    return CliRunner().invoke(app, ["eval", "survival", *args], env={"COLUMNS": "200"})


def test_survival_cli_writes_json_km_and_heatmap(cohort_store: tuple[Path, Path], tmp_path: Path) -> None:
    cohort, store = cohort_store
    out = tmp_path / "out"
    result = _invoke("--cohort", str(cohort), "--store", str(store), "--folds", "3", "--epochs", "2",
                     "--heatmap", "cmu_p03", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    saved = json.loads((out / "results.json").read_text())
    assert printed == saved
    assert saved["cohort"]["n_patients"] == N_PATIENTS and saved["cohort"]["fingerprint"]["model"] == (
        "mv_hybrid_tiny"
    )
    assert len(saved["patients"]) == N_PATIENTS
    for model in ("abmil", "coxph"):
        assert set(saved[model]["c_index"]) == {"mean", "std", "folds"}
        assert len(saved[model]["c_index"]["folds"]) == 3
    for name in ("km_abmil.png", "km_coxph.png", "heatmap_cmu_p03.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert saved["figures"]["heatmap"] == str(out / "heatmap_cmu_p03.png")


def test_survival_cli_table_and_skip_missing(cohort_store: tuple[Path, Path], tmp_path: Path) -> None:
    cohort, store = cohort_store
    table = pd.read_csv(cohort)
    extra = pd.DataFrame([("not_extracted", "P99", 3.0, 1)], columns=table.columns)
    with_missing = tmp_path / "cohort.csv"
    pd.concat([table, extra]).to_csv(with_missing, index=False)
    args = ["--cohort", str(with_missing), "--store", str(store), "--folds", "3", "--epochs", "1"]
    refused = _invoke(*args, "--out", str(tmp_path / "a"))
    assert refused.exit_code == 2
    assert "not_extracted" in refused.stderr and "--skip-missing" in refused.stderr
    result = _invoke(*args, "--skip-missing", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert "abmil" in result.stdout and "coxph" in result.stdout and "±" in result.stdout
    assert "mean ± std over folds (ddof 0, not the standard error)" in " ".join(result.stdout.split())
    assert "note: skipped 1 slide(s) absent from the store: not_extracted" in result.stderr
    assert "note: dropped 1 patient(s) left without slides: P99" in result.stderr
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["cohort"]["skipped_slides"] == ["not_extracted"]
    assert any("skipped 1 slide(s)" in n for n in saved["notes"])


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--loss", "deephit"], "--loss 'deephit' is unknown"),
        (["--heatmap", "nope"], "--heatmap nope"),
        (["--folds", "1"], "--folds 1 is out of range"),
    ],
)
def test_survival_cli_usage_errors(cohort_store: tuple[Path, Path], tmp_path: Path, extra, match) -> None:
    cohort, store = cohort_store
    result = _invoke("--cohort", str(cohort), "--store", str(store), "--out", str(tmp_path), *extra)
    assert result.exit_code == 2 and match in result.stderr


def test_survival_cli_bad_cohort_and_store(cohort_store: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = cohort_store
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,time,event\ns1,3,1\n")
    result = _invoke("--cohort", str(bad), "--store", str(store), "--out", str(tmp_path))
    assert result.exit_code == 2 and "missing column(s) patient_id" in result.stderr
    assert str(bad) in result.stderr
    result = _invoke("--cohort", str(bad), "--store", str(tmp_path / "nostore"))
    assert result.exit_code == 2 and "no embedding store" in result.stderr


def test_survival_cli_same_results_on_a_store_imported_from_h5(
    cohort_store: tuple[Path, Path], tmp_path: Path
) -> None:
    from mvh.interop import export_h5, import_h5

    cohort, store = cohort_store
    export_h5(EmbeddingStore.open(store), tmp_path / "h5")
    import_h5(tmp_path / "h5", tmp_path / "imported")
    runs = []
    for uri in (store, tmp_path / "imported"):
        result = _invoke("--cohort", str(cohort), "--store", str(uri), "--folds", "3", "--epochs", "1",
                         "--out", str(tmp_path / uri.name), "--json")
        assert result.exit_code == 0, result.output
        runs.append(json.loads(result.stdout))
    # mvh's own export re-imports with its whole fingerprint (issue 23 item 7)
    fps = [{k: v for k, v in run["cohort"]["fingerprint"].items() if k != "extra"} for run in runs]
    assert fps[0] == fps[1]
    assert runs[0]["patients"] == runs[1]["patients"]
    assert runs[0]["abmil"] == runs[1]["abmil"] and runs[0]["coxph"] == runs[1]["coxph"]


def test_survival_cli_late_heatmap_failure_keeps_results(
    cohort_store: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    cohort, store = cohort_store

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("mvh.tasks.survival.job.plot_attention_heatmap", disk_full)
    out = tmp_path / "out"
    result = _invoke("--cohort", str(cohort), "--store", str(store), "--folds", "3", "--epochs", "1",
                     "--heatmap", "cmu_p03", "--out", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: figure(s) failed: heatmap (No space left on device); results.json is complete" in (
        result.stderr
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["figure_errors"] == {"heatmap": "No space left on device"} and len(saved["patients"]) == 12
    assert "C-index" in result.stdout
