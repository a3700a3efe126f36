"""Sharing a store through a real S3 server (SeaweedFS on loopback): team A writes, team B reads.

Covers the sharing issue's list: extract of the real sample slide into s3://, resume after SIGKILL, two
concurrent writers, a read-only consumer, search and an evaluation from S3, tags and time travel after
more slides are added, the dataset card, verify catching a store corrupted behind mvh's back, and overlap
between two stores that share a slide.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import pytest
from typer.testing import CliRunner

from mvh.cli import app
from mvh.store import EmbeddingStore
from mvh.store.location import parse_location

pytestmark = [pytest.mark.s3, pytest.mark.real_data]

runner = CliRunner()
FAST = [
    "--model",
    "mv_hybrid_tiny",
    "--random-init",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--batch-size",
    "32",
]


def _mvh(*args: str, env: dict[str, str] | None = None):
    result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
    return result


@pytest.fixture
def slides(sample_slide, tmp_path) -> list[Path]:
    """Three copies of the real sample slide under distinct names (54 tissue tiles each)."""
    folder = tmp_path / "slides"
    folder.mkdir()
    out = []
    for name in ("a", "b", "c"):
        out.append(folder / f"{name}.svs")
        shutil.copyfile(sample_slide, out[-1])
    return out


def test_team_a_writes_team_b_reads_searches_evaluates_and_pins_versions(
    s3_bucket, s3_server, slides, he_tile, tmp_path, monkeypatch
):
    monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path / "cache"))
    uri = f"s3://{s3_bucket}/team-a/embeddings.lance"
    done = _mvh("extract", str(slides[0]), str(slides[1]), "--store", uri, *FAST, "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["slides_done"] == 2
    assert _mvh("index", "build", "--store", uri).exit_code == 0
    tagged = _mvh("tag", "create", "paper-v1", "--store", uri)
    assert tagged.exit_code == 0, tagged.output
    card = _mvh(
        "card",
        "--store",
        uri,
        "--set",
        "owner=Team A",
        "--set",
        "license=CC-BY-4.0",
        "--out",
        str(tmp_path / "card"),
    )
    assert card.exit_code == 0, card.output
    assert "owner: Team A" in (tmp_path / "card" / "CARD.md").read_text()
    more = _mvh("extract", str(slides[2]), "--store", uri, *FAST)  # the store keeps growing
    assert more.exit_code == 0, more.output

    reader = s3_server.env(reader=True)  # team B: credentials that can read but not write
    info = _mvh("info", "--store", uri, "--json", env=reader)
    assert info.exit_code == 0, info.output
    described = json.loads(info.stdout)
    assert described["n_slides"] == 3 and "paper-v1" in described["tags"]
    assert described["card_fields"] == {"owner": "Team A", "license": "CC-BY-4.0"}
    assert (
        reader["AWS_SECRET_ACCESS_KEY"] not in info.stdout
        and s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in info.stdout
    )

    pinned = _mvh("info", "--store", f"{uri}@paper-v1", "--json", env=reader)
    assert json.loads(pinned.stdout)["n_slides"] == 2  # time travel: the tagged snapshot
    version = json.loads(pinned.stdout)["version"]
    by_version = _mvh("info", "--store", uri, "--store-version", str(version), "--json", env=reader)
    assert json.loads(by_version.stdout)["n_slides"] == 2

    refused = _mvh("extract", str(slides[2]), "--store", uri, *FAST, "--overwrite", env=reader)
    assert refused.exit_code == 2 and "not writable" in refused.output
    assert reader["AWS_SECRET_ACCESS_KEY"] not in refused.output
    assert _mvh("index", "build", "--store", uri, env=reader).exit_code == 2
    assert _mvh("extract", str(slides[2]), "--store", f"{uri}@paper-v1", *FAST).exit_code == 2

    hits = _mvh(
        "search", "--store", f"{uri}@paper-v1", "--query", str(he_tile), "-k", "3", "--json", env=reader
    )
    assert hits.exit_code == 0, hits.output
    found = json.loads(hits.stdout)
    assert len(found["hits"]) == 3 and {h["slide_id"] for h in found["hits"]} <= {"a", "b"}
    assert Path(os.environ["MVH_CACHE_DIR"]).is_dir()  # team B's index copy is in its own cache

    labels = tmp_path / "labels.csv"
    store = EmbeddingStore.open(parse_location(f"{uri}@paper-v1", env={**os.environ, **reader}))
    rows, _ = store.all_embeddings(columns=("tile_id", "x"))
    labels.write_text(
        "tile_id,label\n" + "".join(f"{t},{int(x) % 2}\n" for t, x in zip(rows.tile_id, rows.x, strict=True))
    )
    evaluated = _mvh(
        "eval", "retrieval", "--store", f"{uri}@paper-v1", "--labels", str(labels), "--json", env=reader
    )
    assert evaluated.exit_code == 0, evaluated.output

    exported = _mvh("export", "--store", uri, "--out", str(tmp_path / "h5"), "--read-only", env=reader)
    assert exported.exit_code == 0, exported.output
    assert sorted(p.name for p in (tmp_path / "h5").glob("*.h5")) == ["a.h5", "b.h5", "c.h5"]


def test_verify_catches_a_duplicate_row_appended_behind_mvhs_back(s3_bucket, slides):
    uri = f"s3://{s3_bucket}/verify.lance"
    assert _mvh("extract", str(slides[0]), "--store", uri, *FAST).exit_code == 0
    assert _mvh("verify", "--store", uri).exit_code == 0
    loc = parse_location(uri)
    tiles = lancedb.connect(loc.uri, storage_options=loc.storage_options).open_table("tiles")
    tiles.add(tiles.search().limit(1).to_arrow())  # a copy of one tile row, committed behind mvh's back
    checked = _mvh("verify", "--store", uri, "--json")
    assert checked.exit_code == 1, checked.output


def test_overlap_between_two_stores_that_share_a_slide(s3_bucket, slides):
    a, b = f"s3://{s3_bucket}/lab-a.lance", f"s3://{s3_bucket}/lab-b.lance"
    assert _mvh("extract", str(slides[0]), "--store", a, *FAST).exit_code == 0
    other = slides[0].with_name("renamed.svs")
    shutil.copyfile(slides[0], other)  # the same file under another name in the other lab's store
    assert _mvh("extract", str(other), "--store", b, *FAST).exit_code == 0
    result = _mvh("overlap", "--store", a, "--store", b, "--json")
    assert result.exit_code == 1, result.output  # something is shared
    report = json.loads(result.stdout)
    assert [(s["slide_a"], s["slide_b"]) for s in report["shared_slides"]] == [("a", "renamed")]
    assert (
        report["n_near_duplicate_tiles"] == 54 and report["n_near_duplicate_tiles_outside_shared_slides"] == 0
    )


def _extract_process(uri: str, slides: list[Path], env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "mvh", "extract", *map(str, slides), "--store", uri, *FAST]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # ~45 s on 2 cores: `make test-slow` (CI runs it after `make test`)
def test_two_concurrent_writers_and_a_killed_run_lose_nothing(s3_bucket, s3_server, sample_slide, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    paths = []
    for i in range(6):
        paths.append(folder / f"s{i}.svs")
        shutil.copyfile(sample_slide, paths[-1])
    env = {**os.environ, **s3_server.env()}
    uri = f"s3://{s3_bucket}/shared.lance"
    first, second = _extract_process(uri, paths[:3], env), _extract_process(uri, paths[3:], env)
    for proc in (first, second):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]

    killed = _extract_process(f"s3://{s3_bucket}/killed.lance", paths, env)
    store_loc = parse_location(f"s3://{s3_bucket}/killed.lance", env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if EmbeddingStore.exists(store_loc) and EmbeddingStore.open(store_loc).slide_ids():
            break
        time.sleep(0.5)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    resumed = _extract_process(f"s3://{s3_bucket}/killed.lance", paths, env)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]

    for name in ("shared", "killed"):
        store = EmbeddingStore.open(parse_location(f"s3://{s3_bucket}/{name}.lance", env=env))
        rows, _ = store.all_embeddings(columns=("slide_id", "tile_id"))
        assert store.slide_ids() == [f"s{i}" for i in range(6)]
        assert rows["tile_id"].is_unique and len(rows) == 6 * 54
        assert _mvh("verify", "--store", f"s3://{s3_bucket}/{name}.lance").exit_code == 0


CREATOR = """
import sys, time
import numpy as np, pandas as pd
from mvh.store import EmbeddingStore, StoreFingerprint
fp = StoreFingerprint(model="m", model_config={}, weights_sha256="random-init", weights_path=None,
                      embed_dim=4, tile_px=224, mpp=0.5, mean=None, std=None)
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # both start creating at the same moment (if not late)
store = EmbeddingStore.open_or_create(sys.argv[1], fp)
sid = sys.argv[2]
tiles = pd.DataFrame({"tile_id": [f"{sid}:0:0:448"], "x": [0], "y": [0], "tile_px": 224, "mpp": 0.5,
                      "tissue_fraction": 1.0})
store.add_slide({"slide_id": sid, "path": sid}, tiles, np.ones((1, 4)))
"""


def test_two_processes_creating_one_new_s3_store_at_once_share_it(s3_bucket, s3_server) -> None:
    """The second creator waits for the first one's meta table instead of failing on S3's conflicting PUT."""
    env = {**os.environ, **s3_server.env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for round_ in range(3):
        uri = f"s3://{s3_bucket}/new{round_}.lance"
        start = str(time.time() + 4.0)
        procs = [subprocess.Popen([sys.executable, "-c", CREATOR, uri, sid, start], env=env,
                                  stderr=subprocess.PIPE, text=True) for sid in ("a", "b")]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
        assert EmbeddingStore.open(parse_location(uri, env=env)).slide_ids() == ["a", "b"]
