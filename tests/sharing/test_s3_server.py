"""The real S3 server the sharing tests use: LanceDB reads and writes through it; the reader cannot write."""

from __future__ import annotations

import lancedb
import pyarrow as pa
import pytest

from mvh.store.location import parse_location
from tests.sharing.seaweed import READER, signed_put

pytestmark = pytest.mark.s3


def test_lancedb_round_trip_through_seaweedfs_with_credentials_from_the_environment(s3_bucket):
    loc = parse_location(f"s3://{s3_bucket}/probe.lance")
    db = lancedb.connect(loc.uri, storage_options=loc.storage_options)
    table = db.create_table("t", pa.table({"x": [1, 2, 3]}))
    table.add(pa.table({"x": [4]}))
    again = lancedb.connect(loc.uri, storage_options=loc.storage_options).open_table("t")
    assert sorted(again.to_arrow()["x"].to_pylist()) == [1, 2, 3, 4] and again.version == 2


def test_the_read_only_identity_can_read_but_not_write(s3_bucket, s3_server):
    loc = parse_location(f"s3://{s3_bucket}/ro.lance")
    lancedb.connect(loc.uri, storage_options=loc.storage_options).create_table("t", pa.table({"x": [1]}))
    reader = parse_location(f"s3://{s3_bucket}/ro.lance", env=s3_server.env(reader=True))
    table = lancedb.connect(reader.uri, storage_options=reader.storage_options).open_table("t")
    assert table.to_arrow()["x"].to_pylist() == [1]
    with pytest.raises(Exception):  # noqa: B017 (the server's refusal; mvh maps it to a one-line error)
        table.add(pa.table({"x": [2]}))


def test_the_server_honours_conditional_puts_that_lance_commits_rely_on(s3_bucket, s3_server):
    """Lance commits a table version with `If-None-Match: *`; a server that ignored it could lose commits."""
    def put(body: bytes) -> int:
        return signed_put(s3_server.endpoint, s3_bucket, "probe/v1.manifest", body, {"If-None-Match": "*"})

    assert put(b"first writer") == 200
    assert put(b"second writer") in (409, 412)  # the second create of the same key is refused
    assert signed_put(s3_server.endpoint, s3_bucket, "probe/other", b"x", {}, access=READER) == 403
