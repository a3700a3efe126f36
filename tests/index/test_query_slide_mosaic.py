"""`--query-slide` of a slide larger than the mosaic searches with representative tiles, and says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from mvh.cli import app
from mvh.core.synthetic_embeddings import clustered_embeddings
from mvh.index.ranking import MOSAIC_TILES, representative_tiles
from tests.index.test_faiss_indexes import DIM, add_slide, make_store


def test_the_mosaic_keeps_real_tiles_from_every_cluster() -> None:
    x, labels = clustered_embeddings(2000, dim=DIM, n_clusters=12, seed=1)
    chosen = representative_tiles(x, max_tiles=40)
    assert 0 < len(chosen) <= 40 and np.all(np.diff(chosen) > 0) and chosen.max() < len(x)
    assert set(labels[chosen]) == set(labels)  # every cluster of the slide is represented
    assert np.array_equal(representative_tiles(x[:30], max_tiles=40), np.arange(30))


def test_a_large_query_slide_is_searched_by_its_mosaic(tmp_path: Path) -> None:
    x, _ = clustered_embeddings(MOSAIC_TILES + 200 + 100, dim=DIM, n_clusters=8, seed=2)
    store = make_store(tmp_path)
    add_slide(store, "big", x[: MOSAIC_TILES + 200])
    add_slide(store, "other", x[MOSAIC_TILES + 200 :])
    uri = str(tmp_path / "store")
    assert CliRunner().invoke(app, ["index", "build", "--store", uri]).exit_code == 0
    out = CliRunner().invoke(app, ["search", "--store", uri, "--query-slide", "big", "--json"])
    result = json.loads(out.stdout)
    assert result["query"]["n_tiles"] == MOSAIC_TILES + 200
    assert result["query"]["n_query_tiles"] <= MOSAIC_TILES
    assert any("represented by" in n and "k-means" in n for n in result["notes"])
    assert [h["slide_id"] for h in result["hits"]] == ["other"]
