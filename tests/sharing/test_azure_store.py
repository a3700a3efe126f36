"""A store in Azure Blob Storage (Azurite on loopback): extract, index, search, eval, tag, verify and serve
through `az://`, read-only SAS tokens, concurrent writers and a tag searched after the head moves on.

The real sample slide is extracted once per module (tiny random-init MV_Hybrid, 54 tiles); the writers and
the tag test add rows through the store's own API so that they stay fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mvh.cli import app
from mvh.serve import ServeConfig, create_app
from mvh.store import EmbeddingStore, StoreFingerprint
from mvh.store.location import parse_location
from tests.sharing.azurite_server import ACCOUNT_KEY, Azurite, account_sas

pytestmark = [pytest.mark.azure, pytest.mark.real_data]

REAL = "CMU-1-Small-Region"
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
HIT = ("slide_id", "tile_id", "score")
runner = CliRunner()


def _mvh(*args: str, env: dict[str, str | None] | None = None):
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


def _hits(*args: str, env: dict[str, str | None] | None = None) -> list[tuple]:
    done = _mvh("search", *args, "--json", env=env)
    assert done.exit_code == 0, done.output
    return [tuple(h[k] for k in HIT) for h in json.loads(done.stdout)["hits"]]


def _reader_env(azurite: Azurite) -> dict[str, str | None]:
    """A consumer with a read+list SAS token and no account key (None unsets the writer's key)."""
    return {**azurite.env(sas_token=account_sas("rl")), "AZURE_STORAGE_ACCOUNT_KEY": None}


@pytest.fixture(scope="module")
def lab_store(
    azurite: Azurite, sample_slide: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """az://…/lab.lance with the real slide extracted and its index built (the writer's environment)."""
    azurite.create_container("mvh-lab")
    uri = "az://mvh-lab/team-a/lab.lance"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in azurite.env().items():
            patch.setenv(key, value)
        patch.setenv("MVH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        done = _mvh("extract", str(sample_slide), "--store", uri, *FAST, "--json")
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["tiles"] == 54
        built = _mvh("index", "build", "--store", uri)
        assert built.exit_code == 0, built.output
        yield uri


@pytest.fixture
def writer(azurite: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The writer's credentials (the emulator's account key) in the environment, a fresh index cache."""
    env = azurite.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path / "cache"))
    return env


def test_round_trip_search_equals_a_local_copy_and_every_command_works(lab_store, writer, he_tile, tmp_path):
    on_azure = _hits("--store", lab_store, "--query", str(he_tile), "-k", "5")
    assert len(on_azure) == 5 and {h[0] for h in on_azure} == {REAL}

    fs, root = parse_location(lab_store).filesystem()  # the seam's own Azure filesystem copies it out
    local = tmp_path / "copy.lance"
    pafs.copy_files(root, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    assert (local / "_mvh" / "index").is_dir()  # the published FAISS index came along from beside the tables
    assert _mvh("index", "build", "--store", str(local)).exit_code == 0  # a local store keeps its own
    assert _hits("--store", str(local), "--query", str(he_tile), "-k", "5") == on_azure

    assert _mvh("verify", "--store", lab_store).exit_code == 0
    info = _mvh("info", "--store", lab_store, "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["n_slides"] == 1
    assert ACCOUNT_KEY not in info.stdout and "azure_storage_account_key" in info.stdout

    rows, _ = EmbeddingStore.open(lab_store).all_embeddings(columns=("tile_id", "x"))
    labels = tmp_path / "labels.csv"
    pairs = zip(rows.tile_id, rows.x, strict=True)
    labels.write_text("tile_id,label\n" + "".join(f"{t},{int(x) // 224 % 2}\n" for t, x in pairs))
    out = tmp_path / "eval"
    evaluated = _mvh(
        "eval",
        "retrieval",
        "--store",
        lab_store,
        "--labels",
        str(labels),
        "--leave-out",
        "none",
        "--out",
        str(out),
    )
    assert evaluated.exit_code == 0, evaluated.output
    written = (out / "results.json").read_text()
    assert json.loads(written)["store"] == lab_store and ACCOUNT_KEY not in written

    tile = f"{REAL}:896:448"
    cli = _hits("--store", lab_store, "--query-tile", tile, "-k", "4")
    with TestClient(create_app(ServeConfig(stores=[lab_store]))) as client:
        stores = client.get("/api/stores").json()
        assert [(s["name"], s["n_tiles"]) for s in stores] == [("lab", 54)]
        served = client.post("/api/search", json={"tile": tile, "k": 4}).json()
    assert [tuple(h[k] for k in HIT) for h in served["hits"]] == cli


def test_a_read_only_sas_token_reads_and_a_write_is_refused_in_one_line(
    lab_store, azurite, he_tile, sample_slide, tmp_path
):
    reader = {**_reader_env(azurite), "MVH_CACHE_DIR": str(tmp_path / "cache")}
    sas = reader["AZURE_STORAGE_SAS_TOKEN"]
    info = _mvh("info", "--store", lab_store, "--json", env=reader)
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["n_slides"] == 1 and sas not in info.stdout
    assert len(_hits("--store", lab_store, "--query", str(he_tile), "-k", "3", env=reader)) == 3

    refused = _mvh("extract", str(sample_slide), "--store", lab_store, *FAST, "--overwrite", env=reader)
    assert refused.exit_code == 2, refused.output
    message = refused.output.strip()
    assert "not writable" in message and len(message.splitlines()) == 1
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    assert sas not in message and signature not in message and ACCOUNT_KEY not in message
    tag = _mvh("tag", "create", "nope", "--store", lab_store, env=reader)
    assert tag.exit_code == 2 and len(tag.output.strip().splitlines()) == 1


def test_the_emulator_honours_the_conditional_put_that_lance_commits_rely_on(az_container, azurite):
    first = azurite.request(
        "PUT", f"{az_container}/once.bin", {}, {"x-ms-blob-type": "BlockBlob", "If-None-Match": "*"}, b"first"
    )
    again = azurite.request(
        "PUT",
        f"{az_container}/once.bin",
        {},
        {"x-ms-blob-type": "BlockBlob", "If-None-Match": "*"},
        b"second",
    )
    assert (first, again) == (201, 409)


FINGERPRINT = dict(model="m", model_config={}, weights_sha256="random-init", weights_path=None, embed_dim=4,
                   tile_px=224, mpp=0.5, mean=None, std=None)
WRITER = f"""
import sys
import numpy as np, pandas as pd
from mvh.store import EmbeddingStore, StoreFingerprint
store = EmbeddingStore.open_or_create(sys.argv[1], StoreFingerprint(**{FINGERPRINT!r}))
for sid in sys.argv[2:]:
    tiles = pd.DataFrame({{"tile_id": [f"{{sid}}:{{i}}:0:224" for i in range(3)],
                          "x": [i * 224 for i in range(3)], "y": [0] * 3, "tile_px": 224, "mpp": 0.5,
                          "tissue_fraction": 1.0}})
    store.add_slide({{"slide_id": sid, "path": sid}}, tiles, np.full((3, 4), float(len(sid))))
"""


def test_two_processes_committing_to_one_store_both_survive(az_container, azurite):
    uri = f"az://{az_container}/shared.lance"
    EmbeddingStore.open_or_create(uri, StoreFingerprint(**FINGERPRINT))  # the writers race on commits only
    env = {**os.environ, **azurite.env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    slides = {"a": [f"a{i}" for i in range(4)], "b": [f"b{i}" for i in range(4)]}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, uri, *ids], env=env, stderr=subprocess.PIPE,
                         text=True)
        for ids in slides.values()
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    store = EmbeddingStore.open(parse_location(uri, env=env))
    assert store.slide_ids() == sorted(slides["a"] + slides["b"])
    rows, _ = store.all_embeddings(columns=("tile_id",))
    assert rows["tile_id"].is_unique and len(rows) == 8 * 3
    assert _mvh("verify", "--store", uri).exit_code == 0


def test_a_tag_searched_after_the_head_moves_on_gives_the_tags_hits(lab_store, writer, azurite):
    fs, root = parse_location(lab_store).filesystem()
    uri = "az://mvh-lab/tag-test/lab.lance"  # a copy: moving its head leaves the other tests' store alone
    pafs.copy_files(root, "mvh-lab/tag-test/lab.lance", source_filesystem=fs, destination_filesystem=fs)
    tile = f"{REAL}:896:448"
    before = _hits("--store", uri, "--query-tile", tile, "-k", "5")
    assert _mvh("tag", "create", "paper-v1", "--store", uri).exit_code == 0

    store = EmbeddingStore.open(uri)  # a late slide whose tiles copy the real ones: they would rank
    tiles, vectors = store.all_embeddings(columns=("tile_id", "x", "y", "tile_px", "mpp", "tissue_fraction"))
    late = tiles.assign(tile_id=[t.replace(REAL, "late", 1) for t in tiles.tile_id])
    store.add_slide({"slide_id": "late", "path": "late"}, late, np.asarray(vectors))
    head = EmbeddingStore.open(uri)
    assert head.slide_ids() == sorted([REAL, "late"]) and head.n_tiles == 108

    pinned = EmbeddingStore.open(f"{uri}@paper-v1")
    rows, _ = pinned.all_embeddings(columns=("slide_id", "tile_id"))
    assert pinned.slide_ids() == [REAL] and sorted(rows.tile_id) == sorted(tiles.tile_id)

    reader = _reader_env(azurite)
    assert _hits("--store", f"{uri}@paper-v1", "--query-tile", tile, "-k", "5", env=reader) == before

    # the head's index rebuilt: the tag searches its own index where indexes are kept per version, and
    # is refused as stale where only the head's index is kept; it never answers with the head's hits
    assert _mvh("index", "build", "--store", uri).exit_code == 0
    at_tag = _mvh("search", "--store", f"{uri}@paper-v1", "--query-tile", tile, "-k", "5", "--json",
                  env=reader)
    if at_tag.exit_code == 0:
        assert [tuple(h[k] for k in HIT) for h in json.loads(at_tag.stdout)["hits"]] == before
    else:
        assert at_tag.exit_code == 2 and "stale" in at_tag.output and "index build" in at_tag.output
