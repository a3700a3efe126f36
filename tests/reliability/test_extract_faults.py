"""Extraction faults through the CLI: bad flags and inputs, corrupt slides, id collisions, a failing
`--overwrite`, read-only and full stores. Each ends in one line and the right exit code, never a traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mvh.cli import app
from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.extractor.embedder import Embedder
from mvh.store import EmbeddingStore
from mvh.store.integrity import verify_store
from mvh.store.writer import StoreWriter

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


def slide(path: Path, seed: int = 0) -> Path:
    """A small synthetic slide with a few tissue tiles."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_synthetic_slide(path, 672, 448, 0.5, tissue_rects=[(0, 0, 448, 448)], levels=1, seed=seed)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    slide(folder / "g1.tiff", 1)
    slide(folder / "g2.tiff", 2)
    return folder


def extract(*args: str) -> tuple[int, str, dict | None]:
    result = runner.invoke(app, ["extract", *args, *BASE, "--json"])
    assert "Traceback" not in result.output
    try:
        payload = json.loads(result.stdout)
    except json.JSONDecodeError:
        payload = None
    return result.exit_code, result.output, payload


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--mpp", "inf"], "--mpp"),
        (["--mpp", "nan"], "--mpp"),
        (["--mpp", "0"], "--mpp"),
        (["--workers", "-1"], "--workers"),
        (["--min-tissue", "2"], "--min-tissue"),
        (["--min-tissue", "-1"], "--min-tissue"),
        (["--min-tissue", "nan"], "--min-tissue"),
        (["--tile-px", "0"], "--tile-px"),
        (["--tile-px", "224", "--tile", "256"], "--tile-px"),
        (["--slide-mpp", "inf"], "--slide-mpp"),
        (["--slide-id-from", "name"], "--slide-id-from"),
        (["--precision", "fp8"], "--precision"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag_before_any_work(good, tmp_path, flags, named) -> None:
    store = tmp_path / "s.lance"
    result = runner.invoke(app, ["extract", str(good), "--store", str(store), *BASE[:-4], *flags])
    assert result.exit_code == 2 and named in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not store.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "zeroed_header"])
def test_a_corrupt_tif_among_good_slides_fails_that_slide_only(good, tmp_path, damage) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(good, folder)
    data = slide(tmp_path / "src.tiff", 3).read_bytes()
    bad = {
        "truncated": data[: len(data) // 3],
        "garbage": bytes(range(256)) * 40,
        "empty": b"",
        "zeroed_header": b"II*\0" + bytes(len(data) - 4),
    }[damage]
    (folder / "bad.tif").write_bytes(bad)
    code, output, summary = extract(str(folder), "--store", str(tmp_path / "m.lance"))
    assert code == 1 and summary is not None
    status = {r["slide_id"]: r["status"] for r in summary["slides"]}
    assert status == {"bad": "failed", "g1": "done", "g2": "done"}
    assert "bad.tif" in next(r["error"] for r in summary["slides"] if r["slide_id"] == "bad")


def test_a_different_file_under_a_done_id_is_refused_and_path_ids_keep_both(tmp_path, monkeypatch) -> None:
    a = slide(tmp_path / "a" / "same.tiff", 1)
    b = slide(tmp_path / "b" / "same.tiff", 2)
    store = tmp_path / "ids.lance"
    assert extract(str(a), "--store", str(store))[0] == 0
    code, output, _ = extract(str(a), "--store", str(store))
    assert code == 0 and json.loads(runner.invoke(app, ["info", "--store", str(store), "--json"]).stdout)
    code, output, _ = extract(str(b), "--store", str(store))
    assert code == 2 and str(a) in output.replace("\n", "") and "--slide-id-from path" in output
    code, _, summary = extract(str(b), "--store", str(store), "--overwrite")
    assert code == 0 and f"{b} replaces the done slide from {a}" in summary["notes"][0]
    monkeypatch.chdir(tmp_path)
    code, _, summary = extract("a", "b", "--store", str(tmp_path / "paths.lance"), "--slide-id-from", "path")
    assert code == 0 and sorted(r["slide_id"] for r in summary["slides"]) == ["a__same", "b__same"]
    rows = EmbeddingStore.open(tmp_path / "paths.lance").slide_tiles("b__same")
    assert rows["tile_id"].str.startswith("b__same:").all()


def test_unsafe_slide_ids_and_bad_csv_cells_exit_2(tmp_path) -> None:
    weird = slide(tmp_path / "x" / "a\\b.tiff", 1)
    code, output, _ = extract(str(weird), "--store", str(tmp_path / "w.lance"))
    assert code == 2 and "path separator" in output
    csv = tmp_path / "slides.csv"
    csv.write_text(f"path,mpp\n{slide(tmp_path / 'c.tiff')},abc\n")
    code, output, _ = extract("--slides-csv", str(csv), "--store", str(tmp_path / "c.lance"))
    assert code == 2 and "slides.csv:2: mpp 'abc' is not a number" in output.replace("\n", "")


def test_a_failed_overwrite_keeps_the_committed_tiles(tmp_path) -> None:
    target = slide(tmp_path / "s" / "keep.tiff", 1)
    store = tmp_path / "o.lance"
    assert extract(str(target), "--store", str(store))[0] == 0
    before = EmbeddingStore.open(store).slide_embeddings("keep")[0]
    target.write_bytes(b"unreadable now")
    code, _, summary = extract(str(target), "--store", str(store), "--overwrite")
    assert code == 1 and summary["slides"][0]["status"] == "failed"
    assert summary["notes"] and "kept" in summary["notes"][0]
    reopened = EmbeddingStore.open(store)
    assert reopened.slide_ids() == ["keep"] and (reopened.slide_embeddings("keep")[0] == before).all()
    assert verify_store(reopened).ok


def test_a_read_only_store_is_refused_before_embedding(good, tmp_path, monkeypatch) -> None:
    store = tmp_path / "ro.lance"
    assert extract(str(good / "g1.tiff"), "--store", str(store))[0] == 0

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("embedded before checking that the store is writable")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(Embedder, "__init__", never)
    code, output, _ = extract(str(good), "--store", str(store))
    assert code == 2 and "not writable" in output and "Read-only file system" in output


def test_disk_full_mid_run_is_one_line_and_the_store_stays_consistent(good, tmp_path, monkeypatch) -> None:
    store = tmp_path / "full.lance"
    original = StoreWriter.append_tiles
    calls = []

    def fill_up(self, slide_id, table) -> None:
        calls.append(slide_id)
        if len(calls) > 1:
            self.write(lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")), "tiles")
        original(self, slide_id, table)

    monkeypatch.setattr(StoreWriter, "append_tiles", fill_up)
    result = runner.invoke(app, ["extract", str(good), "--store", str(store), *BASE])
    assert result.exit_code == 1 and "No space left" in result.output and "Traceback" not in result.output
    messages = [line for line in result.output.splitlines() if not line.startswith("[")]  # not progress
    assert len(messages) == 1 and messages[0].startswith("error: cannot write")
    monkeypatch.undo()
    reopened = EmbeddingStore.open(store)
    assert reopened.slide_ids() == ["g1"] and verify_store(reopened).ok


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--min-tissue", "2"], "--min-tissue"), (["--mpp", "inf"], "--mpp"), (["--tile-px", "0"], "--tile-px")],
)
def test_tile_checks_options_before_any_work(good, tmp_path, flags, named) -> None:
    result = runner.invoke(app, ["tile", str(good / "g1.tiff"), "--out", str(tmp_path / "t"), *flags])
    assert result.exit_code == 2 and named in result.output and not (tmp_path / "t").exists()


def test_tile_out_naming_an_existing_file_exits_2(good, tmp_path) -> None:
    existing = tmp_path / "grid.parquet"
    existing.write_text("keep me")
    result = runner.invoke(app, ["tile", str(good / "g1.tiff"), "--out", str(existing)])
    assert result.exit_code == 2 and "existing file" in result.output and existing.read_text() == "keep me"


@pytest.mark.slow  # a second interpreter as another user imports torch: ~50 s on two cores
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to run a command as nobody"
)
def test_a_store_another_user_cannot_write_is_refused_before_embedding(good) -> None:
    """A real permission check: the store belongs to root, `mvh extract` runs as nobody."""
    folder = Path(tempfile.mkdtemp(prefix="mvh-ro-"))
    try:
        folder.chmod(0o755)
        target = shutil.copy(good / "g1.tiff", folder / "g1.tiff")
        store = folder / "ro.lance"
        assert extract(str(target), "--store", str(store))[0] == 0
        home = folder / "home"
        home.mkdir(mode=0o777)
        home.chmod(0o777)
        for path in [folder, *folder.rglob("*")]:
            if path != home:
                path.chmod(0o755 if path.is_dir() else 0o644)
        command = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "mvh",
            "extract",
            str(target),
            "--store",
            str(store),
            *BASE,
            "--overwrite",
        ]
        env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home)}
        run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=home)
        assert run.returncode == 2, run.stderr
        assert "not writable" in run.stderr and "Traceback" not in run.stderr
        assert verify_store(EmbeddingStore.open(store)).ok
    finally:
        shutil.rmtree(folder)
