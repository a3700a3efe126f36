"""`mvh eval st` end to end on planted synthetic data, tiny random-init backbone (classify: its own file)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mvh.cli import app
from mvh.tasks.st_synthetic import write_synthetic_st_cohort

MODEL = "vit_dinov2_tiny"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_synthetic_st_cohort(tmp_path_factory.mktemp("cohort"), grid=(6, 4), seed=0)


@pytest.fixture(scope="module")
def st_run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("st_out")
    args = ["eval", "st", str(cohort.root), "--meta", str(cohort.meta), "--model", MODEL, "--random-init",
            "--top-genes", "8", "--folds", "5", "--compare", "random,loso", "--out", str(out),
            "--device", "cpu", "--regressor", "ridge-exact"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    return args, out, result


def test_st_recovers_planted_signal_and_loso_is_lower(st_run):
    _, out, result = st_run
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert res["job"] == "st"
    m = res["models"][MODEL]["splits"]
    assert m["random"]["pcc"]["mean"] > 0.25
    assert m["loso"]["pcc"]["mean"] < m["random"]["pcc"]["mean"]
    drop = res["models"][MODEL]["drop"]
    assert drop == pytest.approx(1 - m["loso"]["pcc"]["mean"] / m["random"]["pcc"]["mean"])
    assert len(m["random"]["pcc"]["folds"]) == 5 and len(m["loso"]["pcc"]["folds"]) == 3
    # Planted signal genes dominate the per-gene table; pure-noise genes stay near zero.
    sig = [v for g, v in m["random"]["genes"].items() if g.startswith("SIG") and v is not None]
    assert max(sig) > 0.5
    assert res["settings"]["seed"] == 1 and res["settings"]["folds"] == 5  # HEST's default seed
    assert "drop" in result.output and MODEL in result.output
    for name in ("gene_pcc_random.png", "gene_pcc_loso.png", f"spatial_{MODEL}_loso.png"):
        assert (out / name).stat().st_size > 2000


def test_st_rerun_reuses_stored_embeddings(st_run):
    from mvh.store import EmbeddingStore

    args, out, _ = st_run
    store = EmbeddingStore.open(out / "stores" / f"{MODEL}.lance")
    version = store.version
    # The same store named directly (no --model): nothing is embedded again.
    rerun = ["eval", "st", args[2], "--meta", args[4], "--store", str(out / "stores" / f"{MODEL}.lance"),
             "--top-genes", "8", "--split", "patient", "--folds", "3", "--json", "--out", str(out / "rerun"),
             "--no-pca"]
    result = CliRunner().invoke(app, rerun)
    assert result.exit_code == 0, result.output
    assert EmbeddingStore.open(out / "stores" / f"{MODEL}.lance").version == version
    res = json.loads(result.output)
    assert res["settings"]["splits"] == ["patient"]
    for fold in res["settings"]["folds_by_split"]["patient"]:
        assert len(fold["test_samples"]) >= 1


def test_st_tables_label_random_as_spot_level_and_show_progress(st_run):
    _, out, result = st_run
    assert "random (spot-level)" in result.output and "NaN genes" in result.output
    assert "mean ± std over folds (ddof 0)" in " ".join(result.output.split())
    assert "folds" in result.output  # plain progress lines when not on a terminal
    res = json.loads((out / "results.json").read_text())
    assert res["models"][MODEL]["splits"]["random"]["level"].startswith("spot-level")
    assert res["samples"][0]["patient_source"] == "meta" and res["notes"]


def _moved_copy(cohort, st_run, tmp_path, sample_id, change):
    """The cohort with one sample's spot centres changed, and a copy of the first run's stores."""
    import shutil

    import anndata

    _, out, _ = st_run
    root = tmp_path / "cohort"
    shutil.copytree(cohort.root, root)
    shutil.copytree(out / "stores", tmp_path / "stores")
    path = root / "st" / f"{sample_id}.h5ad"
    ad = anndata.read_h5ad(path)
    ad.obsm["spatial"] = change(np.asarray(ad.obsm["spatial"], dtype=np.float64))
    ad.write_h5ad(path)
    return root


def _rerun(root, cohort, tmp_path, *extra):
    args = ["eval", "st", str(root), "--meta", str(cohort.meta), "--model", MODEL, "--random-init",
            "--store-dir", str(tmp_path / "stores"), "--top-genes", "8", "--device", "cpu", "--no-pca",
            "--out", str(tmp_path / "out"), *extra]
    return CliRunner().invoke(app, args, env={"COLUMNS": "250"})


def test_st_moved_spots_are_embedded_again(cohort, st_run, tmp_path):
    from mvh.store import EmbeddingStore

    def permute(xy):
        return xy[::-1].copy()  # every spot of A0 now sits on another square of the slide

    root = _moved_copy(cohort, st_run, tmp_path, "A0", permute)
    result = _rerun(root, cohort, tmp_path)
    assert result.exit_code == 0, result.output
    assert "A0" in result.output and "embedded again" in result.output
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    by_id = {e["sample_id"]: e for e in res["embedding"][MODEL]}
    assert by_id["A0"]["status"] == "updated" and by_id["A0"]["n_embedded"] == 24
    assert by_id["B0"]["status"] == "reused" and by_id["B0"]["n_embedded"] == 0
    assert res["settings"]["splits"] == ["patient"]  # the default split
    tiles = EmbeddingStore.open(tmp_path / "stores" / f"{MODEL}.lance").slide_tiles("A0").set_index("tile_id")
    import anndata

    ad = anndata.read_h5ad(root / "st" / "A0.h5ad")
    expected = np.floor(np.asarray(ad.obsm["spatial"])[:, 0]).astype(int) - 112
    assert tiles.loc[list(ad.obs_names), "x"].tolist() == expected.tolist()


def test_st_spots_moved_off_the_slide_are_refused_or_dropped(cohort, st_run, tmp_path):
    def off(xy):
        return xy + 100_000  # the reproduction: every spot of B1 moved by 100,000 px

    root = _moved_copy(cohort, st_run, tmp_path, "B1", off)
    result = _rerun(root, cohort, tmp_path)
    assert result.exit_code == 2, result.output
    assert "B1.h5ad" in result.output and "24 spot(s) with bad coordinates" in result.output
    assert "--drop-bad-spots" in result.output and "Traceback" not in result.output
    result = _rerun(root, cohort, tmp_path, "--drop-bad-spots")
    assert result.exit_code == 0, result.output
    assert "dropped 24 spot(s)" in result.output
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(res["dropped_spots"]) == 24 and {d["sample_id"] for d in res["dropped_spots"]} == {"B1"}
    assert res["settings"]["n_spots"] == 5 * 24 and res["settings"]["drop_bad_spots"] is True


def test_st_usage_errors(cohort, tmp_path):
    result = CliRunner().invoke(app, ["eval", "st", str(cohort.root), "--split", "loso", "--model", MODEL,
                                      "--random-init", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--meta" in result.output
    result = CliRunner().invoke(app, ["eval", "st", str(cohort.root), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no model given" in result.output
    for extra, flag in ((["--regressor", "svm"], "--regressor"), (["--folds", "1"], "--folds"),
                        (["--compare", "random,spots"], "spots")):
        result = CliRunner().invoke(app, ["eval", "st", str(cohort.root), "--model", MODEL, "--random-init",
                                          "--out", str(tmp_path), *extra])
        assert result.exit_code == 2 and flag in result.output, result.output


def test_st_writes_held_out_predictions_that_the_viewer_reads(st_run, cohort):
    import anndata
    import pandas as pd

    from mvh.serve.results import read_results_folder

    _, out, result = st_run
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert sorted(res["prediction_tables"]) == sorted(str(p) for p in out.glob("predictions_*.csv"))
    table = pd.read_csv(out / f"predictions_{MODEL}_loso.csv")
    sample = str(table["sample_id"].iloc[0])
    assert table["sample_id"].nunique() == 1  # one held-out sample (fold 0)
    genes = [c for c in table.columns if c not in ("sample_id", "x", "y")]
    assert len(genes) == 8 and set(genes) <= set(res["models"][MODEL]["splits"]["loso"]["genes"])
    spots = anndata.read_h5ad(next(cohort.root.rglob(f"{sample}.h5ad")))
    expected = {(round(x), round(y)) for x, y in np.asarray(spots.obsm["spatial"])}
    assert {(round(x), round(y)) for x, y in zip(table["x"], table["y"], strict=True)} <= expected
    layers = read_results_folder(out, "st").layers
    st_layers = [layer for layer in layers if layer.slide_id == sample]
    assert st_layers and set(genes) <= set(st_layers[0].values)


def test_st_default_is_hest_and_says_when_pca_cannot_run(st_run, cohort, tmp_path):
    """HEST's PCA(256) needs 256 training spots: on 96 the error is one line naming the ways out."""
    args, out, _ = st_run
    result = CliRunner().invoke(app, ["eval", "st", args[2], "--meta", args[4], "--store",
                                      str(out / "stores" / f"{MODEL}.lance"), "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "PCA(256)" in result.output and "--no-pca" in result.output and "Traceback" not in result.output
    help_text = CliRunner().invoke(app, ["eval", "st", "--help"], env={"COLUMNS": "200"}).output
    assert "ridge-exact" in help_text and "predict_folds" in help_text and "--hest-exact" not in help_text
