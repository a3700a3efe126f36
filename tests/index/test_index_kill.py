"""A build SIGKILLed midway (after its first shard) leaves the previous index in use; a rerun completes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from mvh.index.build import build_index
from mvh.index.index_cache import index_dir
from mvh.index.index_files import load_index, read_meta
from mvh.index.ranking import search
from tests.index.test_faiss_indexes import DIM, add_slide, make_store

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import mvh.index.shards as shards
    from mvh.index.build import build_index
    from mvh.store import EmbeddingStore

    original = shards.add_shard
    calls = []

    def add_then_die(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # one shard written, the build not saved
        return out

    import mvh.index.build as build
    build.add_shard = add_then_die
    build_index(EmbeddingStore.open(sys.argv[1]), shard_tiles=40)
    """
)


def test_a_killed_build_keeps_the_previous_index_and_a_rerun_completes(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    store = make_store(tmp_path)
    embs = {s: rng.standard_normal((40, DIM)).astype(np.float32) for s in ("a", "b", "c")}
    for slide_id, emb in embs.items():
        add_slide(store, slide_id, emb)
    build_index(store)
    before = read_meta(store)
    query = embs["b"][[5]]
    old_hits = search(store, query, k=3)
    add_slide(store, "d", rng.standard_normal((40, DIM)).astype(np.float32))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "store")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr[-2000:]
    assert read_meta(store) == before  # index.json untouched: the previous build is the one in use
    stale = load_index(store, allow_stale=True)
    assert stale.n == 120 and stale.meta["build"] == before["build"]
    assert search(store, query, k=3, index=stale).equals(old_hits)
    leftovers = {p.name for p in index_dir(store).glob("part-*")} - set(before["files"])
    assert leftovers  # the killed build's first part, unnamed by any build

    result = build_index(store)
    assert result.n_tiles == 160 and not result.incremental
    fresh = load_index(store)
    assert fresh.n == 160 and fresh.meta["build"] != before["build"]
    hits = search(store, query, k=1)
    assert hits.iloc[0]["tile_id"] == old_hits.iloc[0]["tile_id"]
