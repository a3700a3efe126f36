"""Batch extraction into a store: end to end, failures, resume after SIGKILL, several processes."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.errors import FingerprintMismatchError, UsageError
from mvh.extractor.embedder import Embedder
from mvh.extractor.extract import extract_slides, parse_devices
from mvh.extractor.extract_config import ExtractConfig
from mvh.extractor.pipeline import embed_grid, tiles_of_worker
from mvh.extractor.slide import open_slide
from mvh.extractor.slide_inputs import find_slides
from mvh.extractor.tiling import make_tile_grid, read_tile
from mvh.progress import SLIDES, TILES, Event, Recorder
from mvh.store import EmbeddingStore

MODEL = "mv_hybrid_tiny"
TINY = {"depth": 2, "embed_dim": 32}  # one Mamba + one attention block: the pipeline, fast on CPU
CFG = ExtractConfig(MODEL, random_init=True, overrides=TINY, batch_size=4, workers=0)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory) -> Path:
    """Three small synthetic slides (5, 6 and 3 tissue tiles at 224 px, 0.5 um/px) and one corrupt file."""
    folder = tmp_path_factory.mktemp("slides")
    rects = {"s1": [(0, 0, 672, 448)], "s2": [(0, 0, 448, 672)], "s3": [(224, 224, 896, 448)]}
    for i, (name, rect) in enumerate(rects.items()):
        write_synthetic_slide(folder / f"{name}.tiff", 1120, 896, 0.5, tissue_rects=rect, levels=2, seed=i)
    (folder / "broken.svs").write_bytes(b"this is not a slide" * 100)
    return folder


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(MODEL, random_init=True, overrides=TINY, device="cpu")


def grid_of(path: Path):
    with open_slide(path) as slide:
        return make_tile_grid(slide, mpp=0.5, tile_px=224, min_tissue=0.25)


def test_find_slides(slide_dir, tmp_path) -> None:
    found = find_slides([slide_dir])
    assert [s.slide_id for s in found] == ["broken", "s1", "s2", "s3"]
    assert [s.slide_id for s in find_slides([slide_dir], glob="s*.tiff")] == ["s1", "s2", "s3"]
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "deep.svs").write_bytes(b"x")
    assert find_slides([tmp_path], recursive=True)[0].slide_id == "deep"
    with pytest.raises(UsageError, match="no slides found"):
        find_slides([tmp_path])
    csv = tmp_path / "list.csv"
    csv.write_text(f"path,mpp\n{slide_dir / 's1.tiff'},0.25\n{slide_dir / 's2.tiff'},\n")
    rows = find_slides(slides_csv=csv)
    assert [(s.slide_id, s.mpp) for s in rows] == [("s1", 0.25), ("s2", None)]
    (tmp_path / "a" / "deep.tiff").write_bytes(b"x")
    with pytest.raises(UsageError, match="share the id 'deep'"):
        find_slides([tmp_path], recursive=True)
    assert parse_devices("0,1") == ["cuda:0", "cuda:1"] and parse_devices("cpu,cpu") == ["cpu", "cpu"]


def test_embed_grid_matches_tile_by_tile_embedding(slide_dir, embedder) -> None:
    grid = grid_of(slide_dir / "s1.tiff")
    with open_slide(slide_dir / "s1.tiff") as slide:
        want = embedder.embed_images([read_tile(slide, grid, i) for i in range(len(grid))])
    np.testing.assert_allclose(embed_grid(embedder, grid, batch_size=3), want, atol=1e-5, rtol=0)


def test_extract_with_a_corrupt_file_then_resume(slide_dir, embedder, tmp_path) -> None:
    uri = tmp_path / "e.lance"
    progress = Recorder()
    summary = extract_slides([slide_dir], uri, CFG, device="cpu", progress=progress)
    status = {r.slide_id: r.status for r in summary.slides}
    assert status == {"broken": "failed", "s1": "done", "s2": "done", "s3": "done"}
    assert summary.exit_code == 1 and "broken.svs" in summary.slides[0].error
    store = EmbeddingStore.open(uri)
    grids = {sid: grid_of(slide_dir / f"{sid}.tiff") for sid in ("s1", "s2", "s3")}
    assert summary.n_tiles == sum(len(g) for g in grids.values()) == store.n_tiles
    assert progress.count(Event.TOTAL, SLIDES) == 4 and progress.count(Event.ADVANCE, SLIDES) == 4
    assert progress.count(Event.TOTAL, TILES) == progress.count(Event.ADVANCE, TILES) == summary.n_tiles
    # Batches of 4 span slide boundaries; each slide still gets exactly its own tiles' embeddings.
    for sid, grid in grids.items():
        emb, coords = store.slide_embeddings(sid)
        with open_slide(slide_dir / f"{sid}.tiff") as slide:
            want = embedder.embed_images([read_tile(slide, grid, i) for i in range(len(grid))])
        order = np.lexsort((grid.x, grid.y))
        np.testing.assert_array_equal(coords, np.stack([grid.x, grid.y], 1)[order])
        np.testing.assert_allclose(emb, want[order], atol=1e-5, rtol=0)
    failed = store.slides(status="failed").iloc[0]
    assert failed["slide_id"] == "broken" and failed["error"]
    before = store.slides().set_index("slide_id")["timestamp"]
    again = extract_slides([slide_dir], uri, CFG, device="cpu")
    assert [r.status for r in again.slides] == ["failed", "skipped", "skipped", "skipped"]
    assert store.slides().set_index("slide_id")["timestamp"]["s1"] == before["s1"]
    with pytest.raises(FingerprintMismatchError):
        extract_slides(
            [slide_dir], uri, ExtractConfig(MODEL, random_init=True, overrides=TINY, mpp=1.0), device="cpu"
        )


def test_real_slide_end_to_end(sample_slide, tmp_path) -> None:
    cfg = ExtractConfig(MODEL, random_init=True, overrides=TINY, batch_size=32, dtype="float16")
    summary = extract_slides([sample_slide], tmp_path / "real.lance", cfg, device="cpu")
    assert summary.exit_code == 0
    store = EmbeddingStore.open(tmp_path / "real.lance")
    grid = grid_of(sample_slide)
    emb, coords = store.slide_embeddings(sample_slide.stem)
    assert len(emb) == len(grid) == summary.n_tiles > 10 and np.isfinite(emb).all()
    assert {tuple(c) for c in coords} == set(zip(grid.x.tolist(), grid.y.tolist(), strict=True))
    tiles = store.slide_tiles(sample_slide.stem)
    assert set(tiles["tile_id"]) == set(grid.tile_ids)
    assert set(tiles["model"]) == {MODEL} and set(tiles["weights_sha256"]) == {"random-init"}
    row = store.slides().iloc[0]
    assert (
        row["mpp_source"] == "metadata"
        and abs(row["mpp"] - 0.499) < 1e-3
        and Path(row["path"]) == sample_slide.resolve()
    )
    assert (row["width"], row["height"]) == (2220, 2967) and row["size"] == sample_slide.stat().st_size
    assert store.fingerprint.embedding_dtype == "float16" and row["mvh_version"]


def test_unreadable_tiles_fail_their_slide_only(slide_dir, tmp_path) -> None:
    """Planning works (tissue from level 1) but every level-0 tile is zeroed: the slide fails mid-stream."""
    bad = write_synthetic_slide(
        tmp_path / "a_zeroed.tiff", 1120, 896, 0.5, tissue_rects=[(0, 0, 672, 448)], levels=2
    )
    with tifffile.TiffFile(bad) as tif:
        spans = list(zip(tif.pages[0].dataoffsets, tif.pages[0].databytecounts, strict=True))
    data = bytearray(bad.read_bytes())
    for offset, count in spans:
        data[offset : offset + count] = bytes(count)
    bad.write_bytes(bytes(data))
    summary = extract_slides([bad, slide_dir / "s1.tiff"], tmp_path / "z.lance", CFG, device="cpu")
    assert [(r.slide_id, r.status) for r in summary.slides] == [("a_zeroed", "failed"), ("s1", "done")]
    assert "tile decode failed" in summary.slides[0].error
    store = EmbeddingStore.open(summary.store)
    assert store.slide_ids() == ["s1"] and store.tables.tiles.count_rows() == store.n_tiles == summary.n_tiles


def test_decode_workers_give_the_same_store(slide_dir, tmp_path) -> None:
    cfg = ExtractConfig(MODEL, random_init=True, overrides=TINY, batch_size=4, workers=2)
    progress = Recorder()
    summary = extract_slides([slide_dir], tmp_path / "w.lance", cfg, device="cpu", progress=progress)
    assert [r.status for r in summary.slides] == ["failed", "done", "done", "done"]
    assert progress.count(Event.ADVANCE, TILES) == summary.n_tiles
    ref = extract_slides([slide_dir], tmp_path / "ref.lance", CFG, glob="s*.tiff", device="cpu")
    got, want = EmbeddingStore.open(summary.store), EmbeddingStore.open(ref.store)
    rows, emb = got.all_embeddings()
    ref_rows, ref_emb = want.all_embeddings()
    assert rows.equals(ref_rows)
    np.testing.assert_allclose(emb, ref_emb, atol=1e-5, rtol=0)


KILL_SCRIPT = """
import os, sys, time
from mvh.extractor.extract import extract_slides
from mvh.extractor.extract_config import ExtractConfig

def progress(event, task, n=1, detail=""):
    if event.value == "advance" and task == "slides":
        open(sys.argv[3], "w").write("committed")
        time.sleep(600)

cfg = ExtractConfig("mv_hybrid_tiny", random_init=True, overrides={"depth": 2, "embed_dim": 32}, batch_size=4)
extract_slides([sys.argv[1]], sys.argv[2], cfg, glob="s*.tiff", device="cpu", progress=progress)
"""


def test_sigkill_after_first_commit_then_rerun(slide_dir, tmp_path) -> None:
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    uri, marker = tmp_path / "k.lance", tmp_path / "committed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(slide_dir), str(uri), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, "extraction exited before committing a slide"
            assert time.monotonic() < deadline, "no slide committed in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = EmbeddingStore.open(uri)
    assert store.slide_ids() == ["s1"]
    first = store.slides().set_index("slide_id").loc["s1", "timestamp"]
    summary = extract_slides([slide_dir], uri, CFG, glob="s*.tiff", device="cpu")
    assert {r.slide_id: r.status for r in summary.slides} == {"s1": "skipped", "s2": "done", "s3": "done"}
    assert store.slide_ids() == ["s1", "s2", "s3"]
    assert store.slides().set_index("slide_id").loc["s1", "timestamp"] == first
    raw = store.tables.tiles.to_arrow()
    ids = raw.column("tile_id").to_pylist()
    assert len(ids) == len(set(ids)) == store.n_tiles
    for sid in ("s1", "s2", "s3"):
        assert len(store.slide_embeddings(sid)[0]) == len(grid_of(slide_dir / f"{sid}.tiff"))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"mpp": float("inf")}, "--mpp"),
        ({"workers": -1}, "--workers"),
        ({"min_tissue": float("nan")}, "--min-tissue"),
        ({"tile_px": 0}, "--tile-px"),
        ({"batch_size": 0}, "--batch-size"),
        ({"dtype": "int8"}, "--dtype"),
        ({"slide_mpp": -0.5}, "--slide-mpp"),
        ({"max_tiles": 0}, "max_tiles"),
        ({"store": " "}, "--store"),
    ],
)
def test_extract_config_validates_itself_on_construction(changes, named) -> None:
    with pytest.raises(UsageError, match=named):
        ExtractConfig(MODEL, random_init=True, **changes)


def test_extract_result_round_trips_through_its_dict(slide_dir, tmp_path) -> None:
    from mvh.extractor.extract_config import ExtractResult, SlideResult

    result = ExtractResult(
        "s.lance",
        MODEL,
        "random-init",
        ["cpu"],
        2.0,
        [SlideResult("a", "/a.svs", "done", 10, 1.0), SlideResult("b", "/b.svs", "failed", error="bad")],
    )
    data = result.to_dict()
    assert (data["slides_done"], data["slides_failed"], data["tiles"], data["tiles_per_s"]) == (1, 1, 10, 5.0)
    assert ExtractResult.from_dict(data) == result and result.exit_code == 1


@pytest.mark.parametrize(
    ("n_slides", "n_tiles", "workers"), [(1, 10, 2), (1, 1, 2), (3, 7, 2), (4, 5, 2), (5, 9, 3), (2, 6, 1)]
)
def test_workers_share_every_tile_once(n_slides: int, n_tiles: int, workers: int) -> None:
    whole = n_slides - n_slides % workers
    for k in range(n_slides):
        shares = [list(tiles_of_worker(k, n_slides, n_tiles, w, workers)) for w in range(workers)]
        assert sorted(i for share in shares for i in share) == list(range(n_tiles))
        busy = [w for w, share in enumerate(shares) if share]
        if k < whole:
            assert busy == [k % workers]  # dealt out whole, round-robin
        else:
            assert len(busy) == min(workers, n_tiles)  # split: every worker decodes a contiguous share
            assert all(share == list(range(share[0], share[-1] + 1)) for share in shares if share)


def _openslide_tiles(path: Path):
    """Today's path: the grid and its tiles read through OpenSlide (RGBA composited, resized by Pillow)."""
    with open_slide(path, direct=False) as slide:
        grid = make_tile_grid(slide, mpp=0.5, tile_px=224, min_tissue=0.25)
        return grid, [read_tile(slide, grid, i) for i in range(len(grid))]


@pytest.mark.parametrize("name", ["small_20x", "small_40x"])
def test_direct_pipeline_embeds_openslide_pixels_bit_for_bit(aperio_slides, embedder, tmp_path, name) -> None:
    path = aperio_slides[name]
    grid, tiles = _openslide_tiles(path)
    with open_slide(path) as slide:
        assert slide._jpeg is not None
        fast = make_tile_grid(slide, mpp=0.5, tile_px=224, min_tissue=0.25)
        np.testing.assert_array_equal(fast.x, grid.x)  # same tissue mask from the same pixels
        for i in range(len(grid)):
            np.testing.assert_array_equal(read_tile(slide, fast, i), tiles[i])
    cfg = dataclasses.replace(CFG, batch_size=8, workers=0)
    summary = extract_slides([path], tmp_path / "e.lance", cfg, device="cpu")
    emb, coords = EmbeddingStore.open(tmp_path / "e.lance").slide_embeddings(path.stem)
    want = embedder.embed_images(tiles, batch_size=8)  # the same batches as the pipeline's
    order = np.lexsort((grid.x, grid.y))
    assert summary.n_tiles == len(grid) > 20
    np.testing.assert_array_equal(coords, np.stack([grid.x, grid.y], 1)[order])
    np.testing.assert_array_equal(emb, want[order])


def test_one_slide_split_over_two_workers(aperio_slides, embedder, tmp_path) -> None:
    path = aperio_slides["small_20x"]
    grid, tiles = _openslide_tiles(path)
    cfg = dataclasses.replace(CFG, batch_size=8, workers=2)
    progress = Recorder()
    summary = extract_slides([path], tmp_path / "w.lance", cfg, device="cpu", progress=progress)
    assert [r.status for r in summary.slides] == ["done"] and summary.n_tiles == len(grid)
    assert progress.count(Event.TOTAL, TILES) == progress.count(Event.ADVANCE, TILES) == len(grid)
    emb, _ = EmbeddingStore.open(tmp_path / "w.lance").slide_embeddings(path.stem)
    # Each worker's batches hold other tiles than one process's would: equal up to float reordering.
    want = embedder.embed_images(tiles)[np.lexsort((grid.x, grid.y))]
    np.testing.assert_allclose(emb, want, atol=1e-5, rtol=0)
