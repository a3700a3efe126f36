"""Fixtures of the web-app tests: a store from the real sample slide (+ a small synthetic slide), the app,
and a live `mvh serve` process on a free loopback port."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.extractor.extract import extract_slides
from mvh.extractor.extract_config import ExtractConfig, SlideInput
from mvh.index.vector import build_index
from mvh.serve import ServeConfig, create_app
from mvh.store import EmbeddingStore

REAL = "CMU-1-Small-Region"
RESCAN = "CMU-1-Small-Region-rescan"
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="session")
def serve_store(sample_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The real slide (54 tissue tiles) and a synthetic one, tiny random-init MV_Hybrid, Flat index."""
    folder = tmp_path_factory.mktemp("serve")
    synth = write_synthetic_slide(
        folder / "synth.tiff", 896, 896, 0.5, tissue_rects=[(0, 0, 672, 448)], seed=1
    )
    uri = str(folder / "embeddings.lance")
    cfg = ExtractConfig("mv_hybrid_tiny", random_init=True, batch_size=32, workers=0)
    extract_slides([sample_slide, synth], uri, cfg, device="cpu")
    build_index(EmbeddingStore.open(uri))
    return uri


@pytest.fixture(scope="session")
def rescan_store(sample_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store named `rescans` holding the real slide file twice, as REAL and RESCAN (the same file hash, as
    two registrations of one scan), tiny random-init MV_Hybrid, Flat index."""
    uri = str(tmp_path_factory.mktemp("rescans") / "rescans.lance")
    cfg = ExtractConfig("mv_hybrid_tiny", random_init=True, batch_size=32, workers=0)
    extract_slides([SlideInput(sample_slide, name=REAL), SlideInput(sample_slide, name=RESCAN)], uri, cfg,
                   device="cpu")
    build_index(EmbeddingStore.open(uri))
    return uri


@pytest.fixture(scope="session")
def results_dir(serve_store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A survival results folder with per-tile attention for the real slide (the format serve reads)."""
    import numpy as np
    import pandas as pd

    folder = tmp_path_factory.mktemp("survival_out")
    tiles = EmbeddingStore.open(serve_store).slide_tiles(REAL)
    attention = np.random.default_rng(0).random(len(tiles))
    pd.DataFrame({"slide_id": REAL, "x": tiles["x"], "y": tiles["y"], "attention": attention}).to_csv(
        folder / f"attention_{REAL}.csv", index=False
    )
    (folder / "results.json").write_text(json.dumps({"settings": {"heatmap": REAL, "cohort": "c.csv"}}))
    return folder


@pytest.fixture(scope="session")
def st_dir(serve_store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ST results folder with predicted expression of two genes at 20 spot centres of the real slide."""
    import numpy as np
    import pandas as pd

    folder = tmp_path_factory.mktemp("st_out")
    tiles = EmbeddingStore.open(serve_store).slide_tiles(REAL).head(20)
    rng = np.random.default_rng(1)
    pd.DataFrame({"sample_id": REAL, "x": tiles["x"] + 112, "y": tiles["y"] + 112,
                  "MKI67": rng.random(20), "CD3E": rng.random(20)}).to_csv(folder / "predictions_fold0.csv",
                                                                           index=False)
    (folder / "results.json").write_text(json.dumps({"settings": {"split": "patient"}}))
    return folder


@pytest.fixture(scope="session")
def app_client(serve_store: str, results_dir: Path, st_dir: Path) -> Iterator[TestClient]:
    """The app over the store and both results folders, no token."""
    config = ServeConfig(stores=[serve_store], results=[results_dir, st_dir])
    with TestClient(create_app(config)) as client:
        yield client


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mvh", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if found:
            url = found.group(0).rstrip("/")
            for _ in range(100):
                try:
                    httpx.get(url + "/login", timeout=2)
                    return proc, url
                except httpx.TransportError:
                    time.sleep(0.1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("mvh serve did not start: " + "".join(lines))


@pytest.fixture(scope="session")
def live_server(serve_store: str, rescan_store: str, results_dir: Path, st_dir: Path) -> Iterator[str]:
    """`mvh serve` as a real process with a token over both stores (`embeddings`, `rescans`), on a free
    loopback port: its base URL."""
    proc, url = _start(["--store", serve_store, "--store", rescan_store, "--results", str(results_dir),
                        "--results", str(st_dir), "--token", TOKEN])
    yield url
    proc.terminate()
    proc.wait(timeout=20)
