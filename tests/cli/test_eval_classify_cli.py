"""`mvh eval classify` end to end on planted colour classes, tiny random-init backbone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from mvh.cli import app
from mvh.store import EmbeddingStore

MODEL = "vit_dinov2_tiny"
COLOURS = {"tumour": (120, 40, 150), "stroma": (235, 150, 190), "fat": (245, 245, 245)}


def _image_folder(root, n_slides=4, n_per=4):
    """CLASS/SLIDE/tile.png: each class's tiles come from several source slides."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        for s in range(n_slides):
            d = root / name / f"slide{s}"
            d.mkdir(parents=True)
            for i in range(n_per):
                img = np.clip(np.array(colour) + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{name}_{s}_{i}.png")
    return root


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    images = _image_folder(root / "imgs")
    out = root / "out"
    # A random-init backbone's raw features barely vary: UNI's probe keeps every weight at zero on them
    # (reported in a note), so this run uses the standardised sklearn probe.
    result = CliRunner().invoke(app, ["eval", "classify", str(images), "--model", MODEL, "--random-init",
                                      "--probe", "sklearn", "--folds", "4", "--out", str(out),
                                      "--device", "cpu"])
    return root, images, out, result


def test_image_folder_grouped_by_source_slide(classified):
    _, _, out, result = classified
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert res["split"] == "grouped-kfold" and res["grouping"] == "source folder" and res["n_groups"] == 4
    assert res["classes"] == ["fat", "stroma", "tumour"] and res["probe"] == "sklearn"
    for row in res["results"]:
        assert row["balanced_accuracy"]["mean"] > 0.9
        assert (out / f"confusion_{MODEL}_{row['method']}.png").stat().st_size > 1000
    assert "sklearn, standardised" in result.stdout
    assert "mean ± std over folds (ddof 0)" in " ".join(result.stdout.split())  # not a standard error


def test_csv_of_tile_ids_is_grouped_by_slide_and_unknown_ids_exit_2(classified):
    root, _, out, _ = classified
    store_path = out / "stores" / f"{MODEL}.lance"
    rows, _ = EmbeddingStore.open(store_path).all_embeddings(columns=("slide_id", "tile_id"))
    labels = rows.assign(label=rows["tile_id"].str.extract(r"/(\w+?)_\d+_\d+\.png$")[0])
    labels[["tile_id", "label"]].to_csv(root / "labels.csv", index=False)
    args = ["eval", "classify", "--labels", str(root / "labels.csv"), "--store", str(store_path),
            "--folds", "3", "--method", "knn", "--knn-k", "5", "--json", "--out", str(root / "out2")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    # One store slide per image folder: 12 folders (3 classes x 4 source slides).
    assert res["grouping"] == "slide" and res["n_groups"] == 12
    assert res["results"][0]["balanced_accuracy"]["mean"] > 0.9
    bad = root / "bad.csv"
    pd.concat([labels[["tile_id", "label"]], pd.DataFrame({"tile_id": ["nope"], "label": ["fat"]})]).to_csv(
        bad, index=False)
    result = CliRunner().invoke(app, [*args[:3], str(bad), *args[4:]])
    assert result.exit_code == 2 and str(bad) in result.stderr and "nope" in result.stderr
    assert "Traceback" not in result.output


def test_classify_usage_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "classify", "--model", MODEL, "--method", "svm"])
    assert result.exit_code == 2 and "--method" in result.stderr
    args = ["eval", "classify", "--model", MODEL, "--random-init", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "label source" in result.stderr
    result = runner.invoke(app, ["eval", "classify", str(tmp_path), "--model", MODEL, "--probe", "UNI"])
    assert result.exit_code == 2 and "--probe" in result.stderr
    result = runner.invoke(app, ["eval", "classify", str(tmp_path), "--model", MODEL, "--probe-c", "-2"])
    assert result.exit_code == 2 and "--probe-c" in result.stderr
