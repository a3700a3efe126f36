"""Query images kept in memory for the page: bounded LRU, lossless PNG, token-gated, unknown ids 404."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from mvh.serve import ServeConfig, create_app
from mvh.serve.queries import QueryImages
from tests.serve.conftest import TOKEN


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8)


def test_lru_keeps_the_last_n_lossless() -> None:
    kept = QueryImages(keep=3)
    ids = [kept.add(_pixels(i)) for i in range(4)]
    assert len(set(ids)) == 4 and all(len(i) == 32 for i in ids)
    assert kept.png(ids[0]) is None  # the oldest was evicted
    assert kept.png(ids[1]) is not None  # now the most recently used
    kept.add(_pixels(9))  # evicts ids[2], not ids[1]
    assert kept.png(ids[2]) is None
    for i, query_id in ((1, ids[1]), (3, ids[3])):
        png = kept.png(query_id)
        assert png is not None
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), _pixels(i))


def test_ids_that_are_not_ours_are_unknown() -> None:
    kept = QueryImages()
    query_id = kept.add(_pixels(0))
    for bad in ("", "../../etc/passwd", "/etc/passwd", query_id.upper(), query_id + "0", query_id[:-1]):
        assert kept.png(bad) is None, bad


def test_search_links_its_query_and_the_token_guards_it(serve_store: str, he_tile: Path) -> None:
    client = TestClient(create_app(ServeConfig(stores=[serve_store], token=TOKEN)))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    out = client.post("/api/search", files={"image": ("he.png", he_tile.read_bytes(), "image/png")},
                      data={"k": "3"}, headers=auth).json()
    url = out["query"]["image"]
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    shown = client.get(url, headers=auth)
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/png"
    assert np.asarray(Image.open(io.BytesIO(shown.content))).shape == (224, 224, 3)
    unknown = client.get("/api/queries/" + "0" * 32 + ".png", headers=auth)
    assert unknown.status_code == 404 and "search again" in unknown.json()["detail"]
