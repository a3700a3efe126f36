"""Tiles in memory: the cache is bounded by bytes, and ETag / Cache-Control spare the browser re-downloads."""

from __future__ import annotations

import hashlib

import numpy as np
from fastapi.testclient import TestClient

from mvh.serve.tiles import Tile, tile_cache
from tests.serve.conftest import REAL


def test_tile_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    cache = tile_cache(max_bytes=100)
    for key in "abc":
        cache.put(key, Tile.of(bytes(40)))
    assert len(cache) == 2 and cache.total == 80 and cache.get("a") is None  # a went first
    assert cache.get("b") is not None  # b is now the most recently used
    cache.put("d", Tile.of(bytes(30)))
    assert cache.total == 70 and cache.get("c") is None and cache.get("b") is not None
    cache.put("huge", Tile.of(bytes(101)))  # larger than the whole cache: answered, not kept
    assert cache.get("huge") is None and cache.total == 70


def _etag(data: bytes) -> str:
    return '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'


def test_deepzoom_and_stored_tiles_carry_etag_and_answer_304(app_client: TestClient) -> None:
    top = int(np.ceil(np.log2(2967)))
    stored = f"/api/tiles/{REAL}/1120/896.jpg"
    for url in (f"/api/dzi/embeddings/{REAL}/{top}/2_2.jpeg", stored + "?store=embeddings", stored):
        first = app_client.get(url)
        assert first.status_code == 200 and first.headers["etag"] == _etag(first.content)
        assert first.headers["cache-control"] == "private, max-age=3600"
        again = app_client.get(url, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == first.headers["etag"]
        listed = app_client.get(url, headers={"If-None-Match": f'"other", W/{first.headers["etag"]}'})
        assert listed.status_code == 304
        stale = app_client.get(url, headers={"If-None-Match": '"something-else"'})
        assert stale.status_code == 200 and stale.content == first.content


def test_cached_tile_of_an_unknown_store_or_outside_the_pyramid_is_404(app_client: TestClient) -> None:
    top = int(np.ceil(np.log2(2967)))
    assert app_client.get(f"/api/dzi/embeddings/{REAL}/{top}/0_0.jpeg").status_code == 200
    assert app_client.get(f"/api/dzi/nostore/{REAL}/{top}/0_0.jpeg").status_code == 404
    assert app_client.get(f"/api/tiles/{REAL}/1120/896.jpg?store=nostore").status_code == 404
