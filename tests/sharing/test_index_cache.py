"""The FAISS index beside a store in S3: published with checksums, cached, corrupt copies refetched."""

from __future__ import annotations

import pytest

from mvh.errors import StoreError
from mvh.index.index_cache import fetch_build, publish, remote_json, remote_names
from mvh.store.location import parse_location
from mvh.store.sidecar import SidecarFiles

pytestmark = pytest.mark.s3


def _fake_build(folder, payload: bytes, version: int, build: str) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"tiles-{build}.faiss").write_bytes(payload)
    (folder / "part-p.npy").write_bytes(b"rows")  # a part shared by both builds
    return {"build": build, "store_version": version, "files": [f"tiles-{build}.faiss", "part-p.npy"]}


def test_publish_fetch_verify_and_refetch(s3_bucket, s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path / "cache"))
    producer = parse_location(f"s3://{s3_bucket}/team-a.lance")
    assert remote_json(producer, "index.json") is None and remote_names(producer) == []
    meta1 = publish(producer, tmp_path / "build1", _fake_build(tmp_path / "build1", b"index-v1", 3, "a"), [])

    consumer = parse_location(f"s3://{s3_bucket}/team-a.lance", env=s3_server.env(reader=True))
    folder = fetch_build(consumer, remote_json(consumer, "index.json"))
    assert (folder / "tiles-a.faiss").read_bytes() == b"index-v1"
    assert folder.is_relative_to(tmp_path / "cache") and folder.name == "v3-a"
    assert not SidecarFiles(consumer, "index").exists("cached")  # nothing written beside the tables

    (folder / "tiles-a.faiss").write_bytes(b"bit-rot!")  # a corrupt cached copy is detected and refetched
    assert (fetch_build(consumer, meta1) / "tiles-a.faiss").read_bytes() == b"index-v1"

    # a new build gets a new cache key; keeping build a keeps its files, else they are deleted
    meta2 = publish(
        producer,
        tmp_path / "b2",
        _fake_build(tmp_path / "b2", b"index-v2", 5, "b"),
        keep=["tiles-a.faiss", "build-a.json"],
    )
    newer = fetch_build(consumer, remote_json(consumer, "index.json"))
    assert newer != folder and (newer / "tiles-b.faiss").read_bytes() == b"index-v2" and newer.name == "v5-b"
    assert {"tiles-a.faiss", "build-a.json", "tiles-b.faiss", "part-p.npy"} <= set(remote_names(producer))
    publish(producer, tmp_path / "b3", _fake_build(tmp_path / "b3", b"index-v3", 6, "c"), keep=[])
    assert not {"tiles-a.faiss", "tiles-b.faiss", "build-a.json"} & set(remote_names(producer))
    assert meta2["sha256"]["part-p.npy"] == meta1["sha256"]["part-p.npy"]


def test_a_corrupt_published_index_is_refused(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path / "cache"))
    loc = parse_location(f"s3://{s3_bucket}/b.lance")
    meta = publish(loc, tmp_path / "b", _fake_build(tmp_path / "b", b"good", 1, "a"), [])
    SidecarFiles(loc, "index").put("tiles-a.faiss", b"tampered")
    with pytest.raises(StoreError, match="do not match their checksums"):
        fetch_build(loc, meta)


def test_the_read_only_identity_cannot_publish(s3_bucket, s3_server, tmp_path):
    reader = parse_location(f"s3://{s3_bucket}/c.lance", env=s3_server.env(reader=True))
    with pytest.raises(StoreError) as err:
        publish(reader, tmp_path / "c", _fake_build(tmp_path / "c", b"x", 1, "a"), [])
    assert s3_server.env(reader=True)["AWS_SECRET_ACCESS_KEY"] not in str(err.value)
