"""SIGKILL at chosen store calls (a subprocess kills itself at the marker), then the rerun completes.

A marker is `method:before|after[:n]`: kill before/after the n-th call (default the 2nd, i.e. slide s1).

After every kill point: the store opens (or is recreated from an empty leftover), the slides committed
before the kill are whole, the rerun commits the rest, and `verify_store` finds nothing wrong.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mvh.store import EmbeddingStore
from mvh.store.integrity import verify_store
from tests.reliability._faults import DIM, fingerprint, tiles

ROOT = Path(__file__).resolve().parents[2]
SLIDES = ("s0", "s1", "s2")

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import lancedb.db
    import numpy as np
    from mvh.store import EmbeddingStore
    from mvh.store.writer import StoreWriter
    from tests.reliability._faults import fingerprint, tiles

    uri, point = sys.argv[1], sys.argv[2]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, name, when, nth=2, table=None):
        original = getattr(owner, name)
        calls = []

        def wrapper(*args, **kwargs):
            hit = table is None or (args[1] if len(args) > 1 else kwargs.get("name")) == table
            calls.append(hit)
            if hit and when == "before" and sum(calls) == nth:
                die()
            out = original(*args, **kwargs)
            if hit and when == "after" and sum(calls) == nth:
                die()
            return out

        setattr(owner, name, wrapper)

    where, when, nth = (point + ":2").split(":")[:3]
    if where == "create_slides_table":
        wrap(lancedb.db.LanceDBConnection, "create_table", "after", nth=1, table="slides")
    elif where == "create_meta_table":
        wrap(lancedb.db.LanceDBConnection, "create_table", "before", nth=1, table="meta")
    else:
        wrap(StoreWriter, where, when, nth=int(nth))
    store = EmbeddingStore.open_or_create(uri, fingerprint())
    for i, sid in enumerate(["s0", "s1", "s2"]):
        store.add_slide({"slide_id": sid}, tiles(sid, 4 + i), np.full((4 + i, 8), float(i)))
    store.add_slide({"slide_id": "s0"}, tiles("s0", 4), np.full((4, 8), 9.0))  # an --overwrite
    """
)

POINTS = [
    "create_slides_table:after",
    "create_meta_table:before",
    "append_tiles:before",
    "append_tiles:after",
    "upsert_slide:before",
    "upsert_slide:after",
    "drop_stale_tiles:before",
    "append_tiles:after:4",  # during the --overwrite of s0: the old tiles stay the visible ones
    "upsert_slide:after:4",  # the switch happened; the superseded tiles are left invisible
]


@pytest.mark.parametrize("point", POINTS)
def test_killed_at_a_store_call_then_rerun_gives_a_whole_store(tmp_path, point) -> None:
    uri = tmp_path / "k.lance"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(uri), point], env=env, timeout=120)
    assert run.returncode == -signal.SIGKILL, "the marker was never reached"
    store = EmbeddingStore.open_or_create(uri, fingerprint())
    before = store.slide_ids()
    for sid in before:  # what was committed before the kill is whole
        emb, _ = store.slide_embeddings(sid)
        assert len(np.unique(emb)) == 1 and len(emb) == 4 + SLIDES.index(sid)
    for i, sid in enumerate(SLIDES):
        if sid not in before:
            store.add_slide({"slide_id": sid}, tiles(sid, 4 + i), np.full((4 + i, DIM), float(i)))
    assert store.slide_ids() == list(SLIDES) and store.n_tiles == 4 + 5 + 6
    rows, _ = store.all_embeddings()
    assert rows["tile_id"].is_unique and len(rows) == 15
    assert verify_store(store).ok
