"""`mvh tile` and `mvh sample` through Typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from mvh.cli import app
from mvh.core.synthetic_slides import write_plain_image, write_synthetic_slide

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("cli") / "syn.tiff"
    return write_synthetic_slide(path, 1024, 768, mpp=0.5, tissue_rects=[(224, 224, 672, 672)], levels=2)


def test_tile_synthetic_json(synthetic, tmp_path) -> None:
    args = ["tile", str(synthetic), "--out", str(tmp_path), "--json", "--mpp", "1.0", "--tile", "112"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["status"] == "done" and row["mpp_source"] == "metadata"
    # 112 px at 1 um/px = 224 level-0 px, read at level 1 (1 um/px); the rectangle holds 2 x 2 such tiles.
    assert (row["n_tiles"], row["size_l0"], row["level"], row["tile_um"]) == (4, 224, 1, 112.0)
    frame = pd.read_parquet(tmp_path / "syn.tiles.parquet")
    assert frame[["x", "y"]].values.tolist() == [[224, 224], [448, 224], [224, 448], [448, 448]]


def test_tile_table_counts(synthetic, tmp_path) -> None:
    result = runner.invoke(app, ["tile", str(synthetic), "--out", str(tmp_path), "--tile", "112"])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(tmp_path / "syn.tiles.parquet")
    # 112 px at 0.5 um/px on a 0.5 um/px slide: 112-px tiles, the 448 x 448 px rectangle holds 4 x 4.
    assert len(frame) == 16
    assert sorted(set(frame.x)) == [224, 336, 448, 560] and sorted(set(frame.y)) == [224, 336, 448, 560]
    assert "syn" in result.stdout and "16" in result.stdout


def test_png_without_mpp_exits_2_with_the_fix(tmp_path) -> None:
    png = write_plain_image(tmp_path / "tile.png", 128, 128)
    result = runner.invoke(app, ["tile", str(png), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "tile.png" in result.stderr and "no um/px" in result.stderr and "--slide-mpp" in result.stderr
    assert not (tmp_path / "o").exists()


def test_png_with_slide_mpp(tmp_path) -> None:
    png = write_plain_image(tmp_path / "tile.png", 448, 448)
    result = runner.invoke(app, ["tile", str(png), "--slide-mpp", "0.25", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["mpp_source"] == "user" and row["size_l0"] == 448 and row["n_tiles"] == 1


def test_corrupt_file_is_a_clear_error(tmp_path, synthetic) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"\x00garbage" * 100)
    result = runner.invoke(app, ["tile", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "broken.svs: cannot be opened" in result.stderr and "Traceback" not in result.output
    # Among several slides the good ones are tiled and the run exits 1.
    result = runner.invoke(app, ["tile", str(bad), str(synthetic), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 1
    rows = {r["slide_id"]: r for r in json.loads(result.stdout)}
    assert rows["broken"]["status"] == "failed" and rows["syn"]["status"] == "done"


def test_slides_with_the_same_id_are_refused(tmp_path, synthetic) -> None:
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / synthetic.name
    twin.write_bytes(synthetic.read_bytes())
    result = runner.invoke(app, ["tile", str(synthetic), str(twin), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "'syn'" in result.stderr


@pytest.mark.real_data
def test_real_slide_with_preview(sample_slide, tmp_path) -> None:
    result = runner.invoke(app, ["tile", str(sample_slide), "--out", str(tmp_path), "--preview", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["slide_mpp"] == pytest.approx(0.499) and row["tile_um"] == 112.0
    assert 40 <= row["n_tiles"] <= 70
    assert len(pd.read_parquet(row["parquet"])) == row["n_tiles"]
    preview = np.asarray(Image.open(row["preview"]))
    assert preview.ndim == 3 and max(preview.shape[:2]) == 1200
    assert abs(preview.shape[1] / preview.shape[0] - 2220 / 2967) < 0.01


@pytest.mark.real_data
def test_sample_command(sample_slide, tmp_path) -> None:
    result = runner.invoke(app, ["sample", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["path"].endswith("CMU-1-Small-Region.svs")
    result = runner.invoke(app, ["sample", "--dest", str(tmp_path)])
    assert result.exit_code == 0
    assert result.stdout.strip() == str(tmp_path / "CMU-1-Small-Region.svs")
    assert (tmp_path / "CMU-1-Small-Region.svs").read_bytes() == sample_slide.read_bytes()
