"""Snapshots of a store's tables: tags on every table, and slides-table versions mapped to the others."""

from __future__ import annotations

import lancedb
import pyarrow as pa
import pytest

from mvh.errors import UsageError
from mvh.store.versions import create_tag, delete_tag, list_tags, snapshot_versions, table_versions


@pytest.fixture
def tables(tmp_path):
    """tiles and slides tables committed in the store's order: a slide's tiles, then its slide row."""
    db = lancedb.connect(tmp_path / "s.lance")
    tiles = db.create_table("tiles", pa.table({"slide_id": pa.array([], pa.string())}))
    slides = db.create_table("slides", pa.table({"slide_id": pa.array([], pa.string())}))
    for slide in ("a", "b", "c"):
        tiles.add(pa.table({"slide_id": [slide] * 3}))
        slides.add(pa.table({"slide_id": [slide]}))
    return {"tiles": tiles, "slides": slides}


def _rows(tables, versions):
    out = {}
    for name, table in tables.items():
        table.checkout(versions[name])
        out[name] = sorted(set(table.to_arrow()["slide_id"].to_pylist()))
        table.checkout_latest()
    return out


def test_a_tag_reopens_exactly_the_tagged_state_while_the_store_grows(tables):
    tagged = create_tag(tables, "paper", "s.lance")
    assert tagged == table_versions(tables) == {"tiles": 4, "slides": 4}
    tables["tiles"].add(pa.table({"slide_id": ["d"] * 3}))
    tables["slides"].add(pa.table({"slide_id": ["d"]}))
    assert list_tags(tables) == {"paper": {"tiles": 4, "slides": 4}}
    versions = snapshot_versions(tables, tag="paper", version=None, where="s.lance")
    assert _rows(tables, versions) == {"tiles": ["a", "b", "c"], "slides": ["a", "b", "c"]}
    with pytest.raises(UsageError, match="already exists"):
        create_tag(tables, "paper", "s.lance")
    delete_tag(tables, "paper", "s.lance")
    assert list_tags(tables) == {}
    with pytest.raises(UsageError, match="no tag 'paper'"):
        snapshot_versions(tables, tag="paper", version=None, where="s.lance")


def test_a_slides_version_opens_the_tiles_committed_before_it(tables):
    # slides version 3 = slide rows a, b; tiles of a and b (and not c's, committed after) must be there
    versions = snapshot_versions(tables, tag=None, version=3, where="s.lance")
    assert versions == {"slides": 3, "tiles": 3}
    assert _rows(tables, versions) == {"tiles": ["a", "b"], "slides": ["a", "b"]}
    with pytest.raises(UsageError, match="no version 9"):
        snapshot_versions(tables, tag=None, version=9, where="s.lance")
