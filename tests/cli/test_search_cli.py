"""`mvh index build|info`, `mvh search`, `mvh eval retrieval` through Typer's CliRunner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from mvh.cli import app
from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.extractor.extract import extract_slides
from mvh.extractor.extract_config import ExtractConfig
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import make_tile_grid_at, read_tile
from mvh.store import EmbeddingStore

runner = CliRunner()
CFG = ExtractConfig("mv_hybrid_tiny", random_init=True, batch_size=16, workers=0)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slides")
    rects = {"s1": [(0, 0, 672, 448)], "s2": [(0, 0, 448, 672)]}
    return {
        name: write_synthetic_slide(folder / f"{name}.tiff", 672, 672, 0.5, tissue_rects=rect, seed=i)
        for i, (name, rect) in enumerate(rects.items())
    }


@pytest.fixture(scope="module")
def store(slides: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two synthetic slides embedded by tiny random-init MV_Hybrid, and its Flat index built by the CLI."""
    uri = str(tmp_path_factory.mktemp("cli_store") / "store")
    extract_slides(list(slides.values()), uri, CFG, device="cpu")
    result = runner.invoke(app, ["index", "build", "--store", uri, "--json"])
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    assert built["params"]["kind"] == "flat" and built["n_tiles"] == EmbeddingStore.open(uri).n_tiles
    return uri


def test_index_info(store: str) -> None:
    result = runner.invoke(app, ["index", "info", "--store", store, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["exists"] and not info["stale"] and info["n_slides"] == 2
    result = runner.invoke(app, ["index", "info", "--store", store])
    assert result.exit_code == 0 and "up to date" in result.stdout


def test_search_with_a_tile_image_table_and_montage(
    store: str, slides: dict[str, Path], tmp_path: Path
) -> None:
    with open_slide(slides["s2"]) as slide:
        pixels = read_tile(slide, make_tile_grid_at(slide, [224], [448], mpp=0.5, tile_px=224), 0)
    query = tmp_path / "q.png"
    Image.fromarray(pixels).save(query)
    montage = tmp_path / "montage.png"
    args = ["search", "--store", store, "--query", str(query), "-k", "3", "--query-mpp", "0.5",
            "--montage", str(montage)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    first = result.stdout.split("┡")[1].splitlines()[1]
    assert "│ s2 " in first and "224" in first and "448" in first and "1.0000" in first
    assert montage.exists()
    result = runner.invoke(app, [*args[:-2], "--json"])
    hits = json.loads(result.stdout)["hits"]
    assert len(hits) == 3 and hits[0]["tile_id"].startswith("s2") and hits[0]["score"] > 0.9999


def test_search_by_tile_slide_and_exclusion(store: str) -> None:
    result = runner.invoke(app, ["search", "--store", store, "--query-tile", "s1:224:0", "-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    own = out["query"]["tile_id"]
    assert out["query"]["kind"] == "tile" and own.startswith("s1:224:0:")
    # A stored-tile query leaves its own tile out by default, and says so.
    assert own not in {h["tile_id"] for h in out["hits"]} and len(out["hits"]) == 5
    assert any("--include-self" in note for note in out["notes"])
    args = ["search", "--store", store, "--query-tile", "s1:224:0", "-k", "5", "--include-self", "--json"]
    kept = json.loads(runner.invoke(app, args).stdout)["hits"]
    assert kept[0]["tile_id"] == own
    assert [h["tile_id"] for h in kept[1:]] == [h["tile_id"] for h in out["hits"][:4]]
    # The tile id that --json prints is accepted as --query-tile.
    hit = out["hits"][0]["tile_id"]
    again = json.loads(runner.invoke(app, ["search", "--store", store, "--query-tile", hit, "--json"]).stdout)
    assert again["query"]["tile_id"] == hit and hit not in {h["tile_id"] for h in again["hits"]}
    args = ["search", "--store", store, "--query-tile", "s1:224:0", "--exclude-slide", "s1", "--json"]
    hits = json.loads(runner.invoke(app, args).stdout)["hits"]
    assert hits and {h["slide_id"] for h in hits} == {"s2"}
    result = runner.invoke(app, ["search", "--store", store, "--query-slide", "s1"])
    assert result.exit_code == 0, result.output
    assert "s2" in result.stdout and "tiles hit" in result.stdout and "excluded" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "exactly one of"),
        (["--query-tile", "s1:0:0", "--query-slide", "s1"], "exactly one of"),
        (["--query-tile", "s1:0"], "is not <slide_id>:<x>:<y>"),
        (["--query-tile", "nope:0:0"], "not a done slide"),
        (["--query-tile", "s1:0:0", "-k", "0"], "at least 1"),
        (["--query-tile", "s1:1:1"], "nearest stored tile is s1:0:0"),
        (["--query", "x.png", "--include-self"], "--include-self is for --query-tile"),
    ],
)
def test_search_usage_errors(store: str, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["search", "--store", store, *args])
    assert result.exit_code == 2 and message in result.stderr


def test_stale_and_missing_index(store: str, slides: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    extra = write_synthetic_slide(tmp_path / "s3.tiff", 448, 448, 0.5, tissue_rects=[(0, 0, 448, 448)])
    extract_slides([extra], copy, CFG, device="cpu")
    result = runner.invoke(app, ["search", "--store", str(copy), "--query-tile", "s1:0:0"])
    assert result.exit_code == 2 and "stale" in result.stderr and "mvh index build" in result.stderr
    result = runner.invoke(app, ["index", "build", "--store", str(copy), "--update"])
    assert result.exit_code == 0, result.output
    assert "added" in result.stderr and "4" in result.stdout.split("┡")[1]
    shutil.rmtree(copy / "_index")
    result = runner.invoke(app, ["search", "--store", str(copy), "--query-tile", "s1:0:0"])
    assert result.exit_code == 2 and "no vector index" in result.stderr


def test_eval_retrieval(store: str, tmp_path: Path) -> None:
    rows, _ = EmbeddingStore.open(store).all_embeddings()
    labels = tmp_path / "labels.csv"
    side = rows["x"].map(lambda x: "left" if x < 224 else "right")
    pd.DataFrame({"tile_id": rows["tile_id"], "label": side}).to_csv(labels, index=False)
    out = tmp_path / "res"
    args = ["eval", "retrieval", "--store", store, "--labels", str(labels), "--ks", "1,3", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "acc@1" in result.stdout and "recall@3 vs exact" in result.stdout
    saved = json.loads((out / "results.json").read_text())
    assert saved["job"] == "retrieval" and saved["leave_out"] == "slide"
    assert set(saved["exact"]) == {"acc@1", "acc@3", "mv@5", "map@5", "map@5_min_r"}
    assert saved["index"]["recall@1"] == 1.0 and saved["n_queries"] == len(rows)
    result = runner.invoke(app, [*args[:-2], "--leave-out", "none", "--json"])
    assert json.loads(result.stdout)["leave_out"] == "none"
    result = runner.invoke(app, [*args[:-4], "--ks", "1,x"])
    assert result.exit_code == 2 and "comma-separated" in result.stderr
    result = runner.invoke(app, [*args[:-4], "--leave-out", "patient"])
    assert result.exit_code == 2 and "patient" in result.stderr and str(labels) in result.stderr
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"tile_id": ["nope:0:0:448"], "label": ["x"]}).to_csv(bad, index=False)
    result = runner.invoke(app, ["eval", "retrieval", "--store", store, "--labels", str(bad)])
    assert result.exit_code == 2 and str(bad) in result.stderr and "Traceback" not in result.output


def test_index_build_prints_progress_when_piped(store: str, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    result = runner.invoke(app, ["index", "build", "--store", str(copy)])
    assert result.exit_code == 0, result.output
    n = EmbeddingStore.open(copy).n_tiles
    assert f"vectors {n}/{n}" in result.stderr  # the plain line CliRunner (not a terminal) gets


def test_index_build_bad_parameters_exit_2(store: str) -> None:
    for flag, value in (("--hnsw-m", "-1"), ("--nlist", "0"), ("--nbits", "3")):
        result = runner.invoke(app, ["index", "build", "--store", store, "--kind", "auto", flag, value])
        assert result.exit_code == 2 and flag in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1
