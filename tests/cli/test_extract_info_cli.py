"""`mvh extract / info / export / import`: exit codes, JSON output, refusal of mixed fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mvh.cli import app
from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.store import EmbeddingStore

runner = CliRunner()
BASE = [
    "--model",
    "vit_dinov2_tiny",
    "--random-init",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--batch-size",
    "8",
]


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli_slides")
    write_synthetic_slide(
        folder / "good1.tiff", 896, 672, 0.5, tissue_rects=[(0, 0, 448, 448)], levels=2, seed=1
    )
    write_synthetic_slide(folder / "good2.tiff", 896, 672, 0.5, tissue_rects=[(448, 224, 896, 672)], levels=2)
    return folder


@pytest.fixture(scope="module")
def extracted(slides, tmp_path_factory) -> tuple[Path, dict]:
    store = tmp_path_factory.mktemp("cli_store") / "emb.lance"
    result = runner.invoke(app, ["extract", str(slides), "--store", str(store), *BASE, "--json"])
    assert result.exit_code == 0, result.output
    return store, json.loads(result.stdout)


def test_extract_json_summary(extracted) -> None:
    store, summary = extracted
    assert summary["slides_done"] == 2 and summary["slides_failed"] == 0 and summary["tiles"] > 0
    assert summary["weights_sha256"] == "random-init"
    assert EmbeddingStore.open(store).n_tiles == summary["tiles"]


def test_rerun_skips_and_table_output(slides, extracted) -> None:
    store, _ = extracted
    result = runner.invoke(app, ["extract", str(slides), "--store", str(store), *BASE])
    assert result.exit_code == 0, result.output
    assert "random-init" in result.stdout and "skipped" in result.stdout


def test_fingerprint_mismatch_exits_2(slides, extracted) -> None:
    store, _ = extracted
    result = runner.invoke(app, ["extract", str(slides), "--store", str(store), *BASE, "--mpp", "1.0"])
    assert result.exit_code == 2
    assert "another --store" in result.stderr and "differs in mpp" in result.stderr


def test_missing_weights_exits_2(slides, tmp_path) -> None:
    result = runner.invoke(
        app, ["extract", str(slides), "--store", str(tmp_path / "x"), "--model", "vit_dinov2_tiny"]
    )
    assert result.exit_code == 2 and "--random-init" in result.stderr


def test_corrupt_slide_exits_1_others_done(slides, tmp_path) -> None:
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"\x00" * 4096)
    args = [
        "extract",
        str(slides / "good1.tiff"),
        str(bad),
        "--store",
        str(tmp_path / "c.lance"),
        *BASE,
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["slides_done"], summary["slides_failed"]) == (1, 1)
    assert "bad" in result.stderr


def test_info(extracted) -> None:
    store, summary = extracted
    result = runner.invoke(app, ["info", "--store", str(store), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["slides_by_status"] == {"done": 2} and info["n_tiles"] == summary["tiles"]
    assert info["fingerprint"]["model"] == "vit_dinov2_tiny" and "embedding" in " ".join(
        info["schema"]["tiles"]
    )
    text = runner.invoke(app, ["info", "--store", str(store)])
    assert text.exit_code == 0 and "NOT trained weights" in text.stdout
    missing = runner.invoke(app, ["info", "--store", str(store.parent / "none.lance")])
    assert missing.exit_code == 2


def test_export_import_round_trip(extracted, tmp_path) -> None:
    store, _ = extracted
    result = runner.invoke(
        app, ["export", "--store", str(store), "--format", "h5", "--out", str(tmp_path / "h5")]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "import",
            str(tmp_path / "h5"),
            "--store",
            str(tmp_path / "i.lance"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    src, dst = EmbeddingStore.open(store), EmbeddingStore.open(tmp_path / "i.lance")
    assert dst.fingerprint.key() == src.fingerprint.key()  # mvh's own export carries its fingerprint
    src_rows, src_emb = src.all_embeddings()
    dst_rows, dst_emb = dst.all_embeddings()
    assert src_rows.equals(dst_rows) and (src_emb == dst_emb).all()
    pq = runner.invoke(
        app, ["export", "--store", str(store), "--format", "parquet", "--out", str(tmp_path / "pq")]
    )
    assert pq.exit_code == 0 and (tmp_path / "pq" / "tiles.parquet").exists()
    bad = runner.invoke(app, ["export", "--store", str(store), "--format", "csv", "--out", str(tmp_path)])
    assert bad.exit_code == 2


def test_architecture_overrides_are_recorded_and_part_of_the_fingerprint(slides, extracted, tmp_path) -> None:
    store, _ = extracted
    other = tmp_path / "shallow.lance"
    result = runner.invoke(
        app, ["extract", str(slides), "--store", str(other), *BASE, "--overrides", "depth=1"]
    )
    assert result.exit_code == 0, result.output
    assert EmbeddingStore.open(other).fingerprint.model_config["depth"] == 1
    assert EmbeddingStore.open(store).fingerprint.model_config["depth"] != 1
    mixed = runner.invoke(
        app, ["extract", str(slides), "--store", str(store), *BASE, "--overrides", "depth=1"]
    )
    assert mixed.exit_code == 2 and "another --store" in mixed.stderr


def test_unknown_override_exits_2(slides, tmp_path) -> None:
    result = runner.invoke(
        app, ["extract", str(slides), "--store", str(tmp_path / "y"), *BASE, "--overrides", "depht=1"]
    )
    assert result.exit_code == 2 and "depht" in result.stderr
