"""Lance's caches are capped per connection, so a long writer's memory does not grow with its commits."""

from __future__ import annotations

import lancedb
import pyarrow as pa

from mvh.store.connect import connect
from mvh.store.location import parse_location


def _commit_many(db, n: int = 60) -> None:
    table = db.create_table("t", data=pa.table({"slide_id": ["s0"], "v": [0]}))
    for i in range(1, n):  # every commit is a version whose manifest lists all fragments so far
        table.add(pa.table({"slide_id": [f"s{i}"], "v": [i]}))
        table.count_rows()


def test_a_connection_caps_lance_caches_where_the_default_grows(tmp_path, monkeypatch) -> None:
    cap = 64 << 10
    default = lancedb.Session()  # Lance's default sizes (1 GB metadata, 6 GB index)
    _commit_many(lancedb.connect(str(tmp_path / "default"), session=default))
    assert default.size_bytes > cap  # what the cap is for: the default cache keeps growing
    made: list[lancedb.Session] = []
    real = lancedb.Session
    monkeypatch.setattr(lancedb, "Session", lambda **sizes: made.append(real(**sizes)) or made[-1])
    _commit_many(connect(parse_location(str(tmp_path / "capped")), cache_bytes=cap))
    assert len(made) == 1 and 0 < made[0].size_bytes <= cap
