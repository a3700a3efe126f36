"""The IVF-PQ training sample covers every slide: each gives rows in proportion to its tiles, so the
quantiser sees every kind of tissue (a sample from a subset of slides missed the slides left out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mvh.errors import StoreDamagedError
from mvh.index.index_files import slide_state
from mvh.index.shards import training_sample
from tests.index.test_faiss_indexes import DIM, add_slide, make_store

SLIDES = 12


def test_sample_draws_from_every_slide_in_proportion(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    rng = np.random.default_rng(0)
    sizes = [20 if i % 2 else 60 for i in range(SLIDES)]  # 480 tiles: a 24-row sample is 1 in 20
    for i, n in enumerate(sizes):
        emb = 0.01 * rng.standard_normal((n, DIM)).astype(np.float32)
        emb[:, i] += 1.0  # slide i holds cluster i alone: the sample's clusters name its slides
        add_slide(store, f"s{i:02d}", emb)
    state = slide_state(store)
    sample = training_sample(store, state, 24, seed=3)
    assert sample.shape == (24, DIM) and sample.dtype == np.float32
    per_slide = np.bincount(sample[:, :SLIDES].argmax(axis=1), minlength=SLIDES)
    assert per_slide.tolist() == [n * 24 // 480 for n in sizes]  # 3 from a 60-tile slide, 1 from a 20
    stored = {tuple(v) for s in state for v in store.slide_embeddings(s)[0].astype(np.float32)}
    assert {tuple(v) for v in sample} <= stored and len({tuple(v) for v in sample}) == 24
    np.testing.assert_array_equal(training_sample(store, state, 24, seed=3), sample)
    assert not np.array_equal(training_sample(store, state, 24, seed=4), sample)


@pytest.mark.parametrize("change", [-5, 5])
def test_rows_that_do_not_add_up_are_a_damaged_store(tmp_path: Path, change: int) -> None:
    store = make_store(tmp_path)
    rng = np.random.default_rng(1)
    for i in range(3):
        add_slide(store, f"s{i}", rng.standard_normal((30, DIM)).astype(np.float32))
    state = slide_state(store)
    state["s1"][0] += change  # the slide table's count disagrees with the tile rows
    with pytest.raises(StoreDamagedError, match="mvh verify"):
        training_sample(store, state, 90 + change, seed=0)
