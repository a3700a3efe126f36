"""`mvh eval st` and `mvh eval classify` end to end on planted synthetic data, tiny random-init backbone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
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
            "--device", "cpu"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    return args, out, result


def test_st_recovers_planted_signal_and_loso_is_lower(st_run):
    _, out, result = st_run
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    m = res["models"][MODEL]
    assert m["random"]["pcc"]["mean"] > 0.25
    assert m["loso"]["pcc"]["mean"] < m["random"]["pcc"]["mean"]
    assert m["drop"] == pytest.approx(1 - m["loso"]["pcc"]["mean"] / m["random"]["pcc"]["mean"])
    assert len(m["random"]["pcc"]["folds"]) == 5 and len(m["loso"]["pcc"]["folds"]) == 3
    # Planted signal genes dominate the per-gene table; pure-noise genes stay near zero.
    sig = [v for g, v in m["random"]["genes"].items() if g.startswith("SIG") and v is not None]
    assert max(sig) > 0.5
    assert res["settings"]["seed"] == 0 and res["settings"]["folds"] == 5
    assert "drop" in result.output and MODEL in result.output
    for name in ("gene_pcc_random.png", "gene_pcc_loso.png", f"spatial_{MODEL}_loso.png"):
        assert (out / name).stat().st_size > 2000


def test_st_rerun_reuses_stored_embeddings(st_run):
    from mvh.index.store import EmbeddingStore

    args, out, _ = st_run
    store = EmbeddingStore.open(out / "stores" / f"{MODEL}.lance")
    version = store.version
    # The same store named directly (no --model): nothing is embedded again.
    rerun = ["eval", "st", args[2], "--meta", args[4], "--store", str(out / "stores" / f"{MODEL}.lance"),
             "--top-genes", "8", "--split", "patient", "--folds", "3", "--json", "--out", str(out / "rerun")]
    result = CliRunner().invoke(app, rerun)
    assert result.exit_code == 0, result.output
    assert EmbeddingStore.open(out / "stores" / f"{MODEL}.lance").version == version
    res = json.loads(result.output)
    assert res["settings"]["splits"] == ["patient"]
    for fold in res["settings"]["folds_by_split"]["patient"]:
        assert len(fold["test_samples"]) >= 1


def test_st_usage_errors(cohort, tmp_path):
    result = CliRunner().invoke(app, ["eval", "st", str(cohort.root), "--split", "loso", "--model", MODEL,
                                      "--random-init", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--meta" in result.output
    result = CliRunner().invoke(app, ["eval", "st", str(cohort.root), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no model given" in result.output


def _image_folder(root, n_per=12):
    rng = np.random.default_rng(0)
    colours = {"tumour": (120, 40, 150), "stroma": (235, 150, 190), "fat": (245, 245, 245)}
    for split in ("train", "test"):
        for name, colour in colours.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n_per if split == "train" else n_per // 2):
                img = np.clip(np.array(colour) + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    images = _image_folder(root / "imgs")
    out = root / "out"
    result = CliRunner().invoke(app, ["eval", "classify", str(images), "--model", MODEL, "--random-init",
                                      "--out", str(out), "--device", "cpu"])
    return root, images, out, result


def test_classify_image_folder_recovers_planted_classes(classified):
    _, _, out, result = classified
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["split"] == "given" and res["classes"] == ["fat", "stroma", "tumour"]
    for method in ("probe", "knn"):
        assert res["models"][MODEL][method]["balanced_accuracy"]["mean"] > 0.9
        assert (out / f"confusion_{MODEL}_{method}.png").stat().st_size > 1000


def test_classify_csv_of_tile_ids_grouped_folds(classified):
    from mvh.index.store import EmbeddingStore

    root, _, out, _ = classified
    store_path = out / "stores" / f"{MODEL}.lance"
    rows, _ = EmbeddingStore.open(store_path).all_embeddings(columns=("slide_id", "tile_id"))
    labels = rows.assign(label=rows["tile_id"].str.extract(r"/(\w+?)_\d+\.png$")[0],
                         group=rows["tile_id"].str.extract(r"_(\d+)\.png$")[0])
    labels[["tile_id", "label", "group"]].to_csv(root / "labels.csv", index=False)
    result = CliRunner().invoke(app, ["eval", "classify", "--labels", str(root / "labels.csv"),
                                      "--store", str(store_path), "--folds", "3", "--method", "knn",
                                      "--json", "--out", str(root / "out2")])
    assert result.exit_code == 0, result.output
    res = json.loads(result.output)
    assert res["settings"]["split"] == "grouped-kfold"
    assert res["models"][MODEL]["knn"]["balanced_accuracy"]["mean"] > 0.9


def test_classify_csv_of_paths_reuses_embedded_folders(classified):
    from mvh.index.store import EmbeddingStore

    root, images, out, _ = classified
    store_path = out / "stores" / f"{MODEL}.lance"
    version = EmbeddingStore.open(store_path).version
    files = sorted(images.rglob("*.png"))
    pd.DataFrame({"path": [str(f.relative_to(root)) for f in files],
                  "label": [f.parent.name for f in files]}).to_csv(root / "paths.csv", index=False)
    result = CliRunner().invoke(app, ["eval", "classify", "--labels", str(root / "paths.csv"),
                                      "--store", str(store_path), "--method", "knn", "--knn-k", "3",
                                      "--folds", "3", "--json", "--out", str(root / "o3")])
    assert result.exit_code == 0, result.output
    assert EmbeddingStore.open(store_path).version == version  # nothing embedded again
    res = json.loads(result.output)
    assert res["settings"]["n_tiles"] == len(files) and res["settings"]["split"] == "kfold"
    assert res["models"][MODEL]["knn"]["balanced_accuracy"]["mean"] > 0.9


def test_classify_usage_errors(tmp_path):
    result = CliRunner().invoke(app, ["eval", "classify", "--model", MODEL, "--method", "svm"])
    assert result.exit_code == 2 and "--method" in result.output
    result = CliRunner().invoke(app, ["eval", "classify", "--model", MODEL, "--random-init",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2 and "label source" in result.output
