"""The FAISS index beside a store in S3: published with checksums, cached, corrupt copies refetched."""

from __future__ import annotations

import json

import pytest

from mvh.errors import StoreError
from mvh.index.index_cache import cached_index, publish_index, remote_meta
from mvh.store.location import parse_location
from mvh.store.sidecar import SidecarFiles

pytestmark = pytest.mark.s3


def _fake_build(folder, payload: bytes, version: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiles-a.faiss").write_bytes(payload)
    (folder / "tiles-a.parquet").write_bytes(b"rows-" + payload)
    (folder / "index.json").write_text(json.dumps(
        {"index_file": "tiles-a.faiss", "rows_file": "tiles-a.parquet", "store_version": version}
    ))


def test_publish_fetch_verify_and_refetch(s3_bucket, s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path / "cache"))
    producer = parse_location(f"s3://{s3_bucket}/team-a.lance")
    assert remote_meta(producer) is None and cached_index(producer) is None
    _fake_build(tmp_path / "build1", b"index-v1", version=3)
    publish_index(producer, tmp_path / "build1")

    consumer = parse_location(f"s3://{s3_bucket}/team-a.lance", env=s3_server.env(reader=True))
    folder = cached_index(consumer)
    assert (folder / "tiles-a.faiss").read_bytes() == b"index-v1"
    assert folder.is_relative_to(tmp_path / "cache") and "v3-" in folder.name
    assert not SidecarFiles(consumer, "index").exists("cached")  # nothing written beside the tables

    (folder / "tiles-a.faiss").write_bytes(b"bit-rot!")  # a corrupt cached copy is detected and refetched
    assert (cached_index(consumer) / "tiles-a.faiss").read_bytes() == b"index-v1"

    _fake_build(tmp_path / "build2", b"index-v2", version=5)  # a new build gets a new cache key
    publish_index(producer, tmp_path / "build2")
    newer = cached_index(consumer)
    assert newer != folder and (newer / "tiles-a.faiss").read_bytes() == b"index-v2" and "v5-" in newer.name


def test_a_corrupt_published_index_is_refused(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path / "cache"))
    loc = parse_location(f"s3://{s3_bucket}/b.lance")
    _fake_build(tmp_path / "b", b"good", version=1)
    publish_index(loc, tmp_path / "b")
    SidecarFiles(loc, "index").put("tiles-a.faiss", b"tampered")
    with pytest.raises(StoreError, match="do not match their checksums"):
        cached_index(loc)


def test_the_read_only_identity_cannot_publish(s3_bucket, s3_server, tmp_path):
    reader = parse_location(f"s3://{s3_bucket}/c.lance", env=s3_server.env(reader=True))
    _fake_build(tmp_path / "c", b"x", version=1)
    with pytest.raises(StoreError, match="cannot write") as err:
        publish_index(reader, tmp_path / "c")
    assert s3_server.env(reader=True)["AWS_SECRET_ACCESS_KEY"] not in str(err.value)
