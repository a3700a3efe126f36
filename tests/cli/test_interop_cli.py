"""`mvh import` / `mvh export`: exit codes, one-line errors naming the file or flag, JSON, progress."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from mvh.cli import app
from mvh.store import EmbeddingStore
from tests.interop.test_peers import make_mvh_store, trident_slide

runner = CliRunner()


@pytest.fixture()
def features(tmp_path) -> Path:
    folder = trident_slide(tmp_path / "job", "s1", 4).parent
    trident_slide(tmp_path / "job", "s2", 3, seed=5)
    return folder


def _import(folder: Path, store: Path, *extra: str):
    return runner.invoke(app, ["import", str(folder), "--store", str(store), "--model", "uni_v1", *extra])


def test_import_then_export_json(features, tmp_path) -> None:
    result = _import(features, tmp_path / "s.lance", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [f["slide_id"] for f in data["imported"]] == ["s1", "s2"] and data["failed"] == []
    assert data["fingerprint"]["model"] == "external:uni_v1" and data["fingerprint"]["mpp"] == 0.5
    out = runner.invoke(
        app, ["export", "--store", str(tmp_path / "s.lance"), "--out", str(tmp_path / "o"), "--json"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["n_slides"] == 2 and (tmp_path / "o" / "s1.h5").exists()


def test_one_broken_file_exits_1_and_the_rest_is_imported(features, tmp_path) -> None:
    (features / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    result = _import(features, tmp_path / "s.lance")
    assert result.exit_code == 1
    assert "imported 2 slide(s)" in result.stdout and "1 file(s) failed" in result.stdout
    assert "broken.h5" in result.stderr and "Traceback" not in result.output
    store = EmbeddingStore.open(tmp_path / "s.lance")
    assert store.slide_ids() == ["s1", "s2"] and store.slide_ids("failed") == ["broken"]


def test_unsafe_slide_id_exits_2_naming_the_file(features, tmp_path) -> None:
    with h5py.File(features / "s2.h5", "a") as f:
        f["coords"].attrs["name"] = "/etc/passwd"
    result = _import(features, tmp_path / "s.lance")
    assert result.exit_code == 2
    assert str(features / "s2.h5") in result.stderr and "path separator" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "s2.h5" in errors[0] and not (tmp_path / "s.lance").exists()


def test_missing_attribute_exits_2_naming_attribute_and_flag(features, tmp_path) -> None:
    for name in ("s1", "s2"):
        with h5py.File(features / f"{name}.h5", "a") as f:
            del f["coords"].attrs["target_magnification"]
    result = _import(features, tmp_path / "s.lance")
    assert result.exit_code == 2
    assert "`target_magnification`" in result.stderr and "--mpp" in result.stderr
    assert _import(features, tmp_path / "s.lance", "--mpp", "0.5").exit_code == 0


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_bad_mpp_flag_exits_2(features, tmp_path, value) -> None:
    result = _import(features, tmp_path / "s.lance", "--mpp", value)
    assert result.exit_code == 2 and "--mpp" in result.stderr


def test_export_out_existing_file_exits_2(tmp_path) -> None:
    store = make_mvh_store(tmp_path / "s.lance")
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = runner.invoke(app, ["export", "--store", store.uri, "--out", str(target)])
    assert result.exit_code == 2 and "--out" in result.stderr and target.read_text() == "x"
    bad = runner.invoke(
        app, ["export", "--store", store.uri, "--out", str(tmp_path / "o"), "--format", "csv"]
    )
    assert bad.exit_code == 2 and "--format" in bad.stderr


def test_export_parquet_out_is_a_folder_and_the_file_form_exits_2_naming_the_fix(tmp_path) -> None:
    store = make_mvh_store(tmp_path / "s.lance")
    old = runner.invoke(app, ["export", "--store", store.uri, "--format", "parquet", "--out",
                              str(tmp_path / "x.parquet")])
    assert old.exit_code == 2 and not (tmp_path / "x.parquet").exists()
    line = " ".join(old.stderr.split())
    assert "names a file" in line and f"--out {tmp_path / 'x'}" in line and "Traceback" not in old.output
    ok = runner.invoke(app, ["export", "--store", store.uri, "--format", "parquet", "--out",
                             str(tmp_path / "pq"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["files"] == [str(tmp_path / "pq" / "tiles.parquet")]
    assert "OUT/tiles.parquet" in " ".join(runner.invoke(app, ["export", "--help"]).output.split())


def test_export_clam_with_verify(tmp_path) -> None:
    store = make_mvh_store(tmp_path / "s.lance")
    result = runner.invoke(
        app, ["export", "--store", store.uri, "--out", str(tmp_path / "c"), "--format", "clam", "--verify"]
    )
    assert result.exit_code == 0, result.output
    assert "store verified first" in result.stdout
    assert sorted(p.name for p in (tmp_path / "c" / "pt_files").iterdir()) == ["a.pt", "b.pt"]


def test_piped_progress_lines_and_notes(features, tmp_path) -> None:
    result = _import(features, tmp_path / "s.lance")
    assert result.exit_code == 0, result.output
    assert "files 2/2" in result.stderr  # the plain progress line when stdout is not a terminal
    assert "10 / magnification" in result.stderr


def test_extracted_store_exports_what_trident_readers_expect(tmp_path) -> None:
    from mvh.core.synthetic_slides import write_synthetic_slide
    from tests.interop.test_peers import trident_reader_attrs

    write_synthetic_slide(tmp_path / "s40x.tiff", 1344, 896, 0.25, tissue_rects=[(0, 0, 1344, 896)], levels=2)
    store = tmp_path / "e.lance"
    args = ["--model", "vit_dinov2_tiny", "--random-init", "--device", "cpu", "--workers", "0"]
    result = runner.invoke(app, ["extract", str(tmp_path / "s40x.tiff"), "--store", str(store), *args])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["export", "--store", str(store), "--out", str(tmp_path / "o")]).exit_code == 0
    read = trident_reader_attrs(tmp_path / "o" / "s40x.h5")
    attrs = read["attrs"]
    assert (attrs["patch_size"], attrs["patch_size_level0"]) == (224, 448)  # 224 px at 0.5 um/px, 0.25 scan
    assert (attrs["level0_magnification"], attrs["target_magnification"]) == (40, 20)
    emb, coords = EmbeddingStore.open(store).slide_embeddings("s40x")
    np.testing.assert_array_equal(read["features"], emb)
    np.testing.assert_array_equal(read["coords"], coords)
    assert {f"s40x:{x}:{y}:448" for x, y in coords} == set(
        EmbeddingStore.open(store).slide_tiles("s40x")["tile_id"]
    )
