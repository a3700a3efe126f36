"""Versioned indexes on SeaweedFS: team A tags, adds a slide and rebuilds; team B, with read-only keys,
searches `@tag` through the CLI and through `mvh serve` and gets exactly the tag's old hits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mvh.cli import app
from mvh.index.index_cache import remote_names
from mvh.serve import ServeConfig, create_app
from mvh.store import EmbeddingStore
from mvh.store.location import parse_location
from tests.index.test_faiss_indexes import DIM, add_slide
from tests.index.test_faiss_indexes import make_store as _local_store

pytestmark = pytest.mark.s3


def _cli(*args: str, env: dict[str, str] | None = None) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _hits(out: dict) -> list[tuple[str, float]]:
    return [(h["tile_id"], round(h["score"], 5)) for h in out["hits"]]


def test_a_tag_keeps_its_index_on_s3_for_read_only_readers(s3_bucket, s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path / "cache"))
    uri = f"s3://{s3_bucket}/team-a.lance"
    fingerprint = _local_store(tmp_path, "fp").fingerprint
    store = EmbeddingStore.create(uri, fingerprint)
    rng = np.random.default_rng(9)
    base = rng.standard_normal((30, DIM)).astype(np.float32)
    add_slide(store, "a", base)
    add_slide(store, "b", rng.standard_normal((30, DIM)).astype(np.float32))
    _cli("index", "build", "--store", uri)
    reader = s3_server.env(reader=True)
    search = ("search", "--query-tile", "a:0:0:448", "-k", "5")
    before = _hits(_cli(*search, "--store", uri, env=reader))
    assert _cli("tag", "create", "t1", "--store", uri)["index_kept"]
    add_slide(store, "c", base + 0.01 * rng.standard_normal(base.shape).astype(np.float32))
    _cli("index", "build", "--store", uri)

    head = _hits(_cli(*search, "--store", uri, env=reader))
    assert any(t.startswith("c:") for t, _ in head)
    tagged = _cli(*search, "--store", f"{uri}@t1", env=reader)
    assert _hits(tagged) == before and not any("exact search" in n for n in tagged["notes"])
    names = remote_names(parse_location(uri))
    assert "tag-t1.json" in names and sum(n.startswith("build-") for n in names) == 2

    for key, value in reader.items():  # the server runs with the read-only identity only
        monkeypatch.setenv(key, value)
    with TestClient(create_app(ServeConfig(stores=[f"{uri}@t1"]))) as client:
        name = client.get("/api/stores").json()[0]["name"]
        out = client.post("/api/search", json={"tile": "a:0:0", "k": 5, "store": name})
        assert out.status_code == 200, out.text
        assert [(h["tile_id"], round(h["score"], 5)) for h in out.json()["hits"]] == before
    assert os.environ["AWS_ACCESS_KEY_ID"] == reader["AWS_ACCESS_KEY_ID"]
