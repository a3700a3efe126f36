"""Per-slide reads by row id from S3 (SeaweedFS): the filtered read's rows, in fewer object GETs."""

from __future__ import annotations

import numpy as np
import pytest

from mvh.store import EmbeddingStore
from mvh.store.location import parse_location
from tests.reliability._faults import fingerprint
from tests.store.test_slide_rows import add, assert_reads_equal

pytestmark = [pytest.mark.s3]


def _store(bucket: str, n: int = 8) -> tuple[EmbeddingStore, dict[str, np.ndarray]]:
    store = EmbeddingStore.create(f"s3://{bucket}/rows.lance", fingerprint())
    return store, {f"s{i}": add(store, f"s{i}", 20 + 7 * i, seed=i + 1) for i in range(n)}


def _reader(s3_server, uri: str) -> EmbeddingStore:
    """A consumer's handle with the read-only identity's credentials."""
    return EmbeddingStore.open(parse_location(uri, env=s3_server.env(reader=True), read_only=True))


def test_reads_by_rows_from_s3_equal_the_filtered_reads(s3_bucket, s3_server) -> None:
    store, expected = _store(s3_bucket)
    store.create_tag("v1")
    new = add(store, "s2", 9, seed=42)  # a re-extracted slide: delete + append
    store.optimize()  # slides share fragments now
    add(store, "s8", 5, seed=8)  # appended after compaction
    ro = _reader(s3_server, store.uri)
    assert_reads_equal(ro, store)
    np.testing.assert_array_equal(ro.slide_embeddings("s2")[0], new)
    pinned = _reader(s3_server, store.uri + "@v1")
    for slide_id, emb in expected.items():
        np.testing.assert_array_equal(pinned.slide_embeddings(slide_id)[0], emb)


@pytest.mark.parametrize("compacted", [False, True], ids=["fragment-per-slide", "compacted"])
def test_a_slide_read_by_rows_makes_fewer_gets_than_the_filtered_read(
    s3_bucket, s3_server, compacted
) -> None:
    """Counted by the server (its per-bucket request metrics), on the same read-only handle."""
    store, _ = _store(s3_bucket)
    if compacted:
        store.optimize()
    ro = _reader(s3_server, store.uri)
    ro.slide_embeddings("s0")  # opens the files and scans the row map once
    ro.reader.filtered_slide(ro.reader.done_row("s0"), ["embedding"])  # and loads what the filter loads
    for slide_id in ("s3", "s5", "s7"):
        row = ro.reader.done_row(slide_id)
        before = s3_server.request_counts(s3_bucket)
        filtered = ro.reader.filtered_slide(row, ["embedding"])
        between = s3_server.request_counts(s3_bucket)
        by_rows = ro.reader.taken_slide(row, ["embedding"])
        after = s3_server.request_counts(s3_bucket)
        assert by_rows.equals(filtered)
        gets_filtered = between["GET"] - before.get("GET", 0)
        gets_by_rows = after["GET"] - between["GET"]
        assert 1 <= gets_by_rows < gets_filtered, (slide_id, gets_by_rows, gets_filtered)
        assert after.get("PUT", 0) == before.get("PUT", 0)  # a reader writes nothing
