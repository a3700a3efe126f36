"""Provenance through `mvh import` / `mvh export`: the model named by the files, mvh's own fingerprint kept
whole, image search on imported stores, and no local path in what is shared."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mvh.cli import app
from mvh.store import EmbeddingStore
from tests.interop.test_peers import DIM, clam_extract, trident_slide

runner = CliRunner()


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture()
def features(tmp_path) -> Path:
    """Two TRIDENT feature files whose `features.attrs["encoder"]` is uni_v1."""
    folder = trident_slide(tmp_path / "job", "s1", 4).parent
    trident_slide(tmp_path / "job", "s2", 3, seed=5)
    return folder


def test_the_model_is_taken_from_trident_files(features, tmp_path) -> None:
    result = runner.invoke(app, ["import", str(features), "--store", str(tmp_path / "s.lance"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fingerprint"]["model"] == "external:uni_v1"


def test_a_model_flag_contradicting_the_files_exits_2(features, tmp_path) -> None:
    # Before: the store said external:conch_v1 while every file (and its export) said uni_v1.
    store = tmp_path / "s.lance"
    result = runner.invoke(app, ["import", str(features), "--store", str(store), "--model", "conch_v1"])
    assert result.exit_code == 2 and len(_errors(result)) == 1
    line = _errors(result)[0]
    assert str(features / "s1.h5") in line and "'uni_v1'" in line and "drop --model" in line
    assert not EmbeddingStore.exists(store)
    agreeing = runner.invoke(app, ["import", str(features), "--store", str(store), "--model", "uni_v1"])
    assert agreeing.exit_code == 0, agreeing.output


def test_model_is_required_only_when_the_files_name_none(tmp_path) -> None:
    feats = np.random.default_rng(3).normal(size=(4, DIM)).astype(np.float32)
    clam_extract(tmp_path / "feats", "slide1", feats, np.array([[0, 0], [512, 0], [0, 512], [512, 512]]))
    folder, store = tmp_path / "feats" / "h5_files", tmp_path / "c.lance"
    geometry = ["--tile-px", "256", "--mpp", "0.5", "--slide-mpp", "0.25"]
    result = runner.invoke(app, ["import", str(folder), "--store", str(store), *geometry])
    assert result.exit_code == 2 and len(_errors(result)) == 1 and "pass --model NAME" in result.stderr
    named = ["import", str(folder), "--store", str(store), *geometry, "--model", "resnet50"]
    result = runner.invoke(app, named)
    assert result.exit_code == 0, result.output
    assert EmbeddingStore.open(store).fingerprint.model == "external:resnet50"


def test_files_of_two_models_are_refused(features, tmp_path) -> None:
    with h5py.File(features / "s2.h5", "a") as f:
        f["features"].attrs["encoder"] = "conch_v1"
    result = runner.invoke(app, ["import", str(features), "--store", str(tmp_path / "s.lance")])
    assert result.exit_code == 2 and len(_errors(result)) == 1
    assert "'uni_v1'" in result.stderr and "'conch_v1'" in result.stderr and "own --store" in result.stderr


def test_trident_none_encoder_counts_as_no_name(features, tmp_path) -> None:
    for name in ("s1", "s2"):
        with h5py.File(features / f"{name}.h5", "a") as f:
            f["features"].attrs["encoder"] = "None"  # TRIDENT's save_h5 writes a None name so
    result = runner.invoke(app, ["import", str(features), "--store", str(tmp_path / "s.lance")])
    assert result.exit_code == 2 and "pass --model NAME" in result.stderr


def _search(store: Path, query: Path) -> list[tuple[str, float]]:
    assert runner.invoke(app, ["index", "build", "--store", str(store)]).exit_code == 0
    args = ["search", "--store", str(store), "--query", str(query), "--query-mpp", "0.5", "-k", "5", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return [(h["tile_id"], round(h["score"], 6)) for h in json.loads(result.stdout)["hits"]]


def test_reimported_mvh_export_searches_by_image_as_the_original(tmp_path) -> None:
    from mvh.core.synthetic_slides import write_synthetic_slide
    from mvh.extractor.slide import open_slide
    from mvh.extractor.tiling import make_tile_grid_at, read_tile

    slide = write_synthetic_slide(tmp_path / "s.tiff", 896, 896, 0.5, tissue_rects=[(0, 0, 896, 896)], seed=3)
    original = tmp_path / "orig.lance"
    args = ["--model", "vit_dinov2_tiny", "--random-init", "--device", "cpu", "--workers", "0"]
    assert runner.invoke(app, ["extract", str(slide), "--store", str(original), *args]).exit_code == 0
    exported = runner.invoke(app, ["export", "--store", str(original), "--out", str(tmp_path / "h5")])
    assert exported.exit_code == 0, exported.output
    copy = tmp_path / "copy.lance"
    result = runner.invoke(app, ["import", str(tmp_path / "h5"), "--store", str(copy)])
    assert result.exit_code == 0, result.output
    # Before: the copy was external:vit_dinov2_tiny with unknown weights, so no image could query it.
    fp, want = EmbeddingStore.open(copy).fingerprint, EmbeddingStore.open(original).fingerprint
    assert fp.key() == want.key() and (fp.mean, fp.std, fp.seed) == (want.mean, want.std, want.seed)
    with open_slide(slide) as opened:
        pixels = read_tile(opened, make_tile_grid_at(opened, [224], [448], mpp=0.5, tile_px=224), 0)
    query = tmp_path / "q.png"
    Image.fromarray(pixels).save(query)
    hits = _search(original, query)
    assert len(hits) == 5 and hits == _search(copy, query)


def test_image_search_on_imported_features_says_why_and_what_works(features, tmp_path) -> None:
    store = tmp_path / "s.lance"
    assert runner.invoke(app, ["import", str(features), "--store", str(store)]).exit_code == 0
    assert runner.invoke(app, ["index", "build", "--store", str(store)]).exit_code == 0
    query = tmp_path / "q.png"
    Image.fromarray(np.full((224, 224, 3), 200, np.uint8)).save(query)
    result = runner.invoke(app, ["search", "--store", str(store), "--query", str(query)])
    # Before: "None: the weights the store was made with ... pass --weights FILE".
    assert result.exit_code == 2 and len(_errors(result)) == 1, result.output
    line = _errors(result)[0]
    assert "external:uni_v1" in line and "another tool" in line and "needs that model" in line
    assert "--query-tile" in line and "--query-slide" in line and "--weights" not in line
    tile = runner.invoke(app, ["search", "--store", str(store), "--query-slide", "s1", "--json"])
    assert tile.exit_code == 0, tile.output


def test_info_shows_no_local_path(tmp_path) -> None:
    from tests.reliability._faults import fingerprint

    fp = fingerprint(
        weights_sha256="ab" * 32,
        weights_path=str(tmp_path / "ckpt" / "uni.pt"),
        extra={"imported_from": str(tmp_path / "feats")},
    )
    EmbeddingStore.create(tmp_path / "s.lance", fp)
    result = runner.invoke(app, ["info", "--store", str(tmp_path / "s.lance"), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["fingerprint"]
    assert (shown["weights_path"], shown["extra"]["imported_from"]) == ("uni.pt", "feats")
    assert str(tmp_path / "ckpt") not in result.stdout and str(tmp_path / "feats") not in result.stdout
