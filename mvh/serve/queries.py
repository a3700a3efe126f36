"""The query images of recent image searches, as fed to the model, kept in memory for the page to show.

A search answers with `/api/queries/{id}.png`; the pixels stay in a bounded LRU (never on disk) and are
encoded to PNG only when that URL is fetched, so an API client that never looks at them pays nothing.
The id is a random 128-bit hex string: it names an entry in memory, never a file.
"""

from __future__ import annotations

import io
import re
import secrets

import numpy as np
from PIL import Image

from mvh.serve.lru import LruCache

# 224 px RGB is 150 KB: 256 queries are ~38 MB.
DEFAULT_KEEP = 256
QUERY_ID = re.compile(r"[0-9a-f]{32}")


class QueryImages:
    """A thread-safe LRU of the last `keep` query images (RGB uint8 [H, W, 3]) by random id."""

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        self._images: LruCache[str, np.ndarray] = LruCache(keep)

    def add(self, pixels: np.ndarray) -> str:
        """Keep a query image (read-only view, no copy); its new id."""
        pixels = pixels.view()
        pixels.flags.writeable = False
        query_id = secrets.token_hex(16)
        self._images.put(query_id, pixels)
        return query_id

    def png(self, query_id: str) -> bytes | None:
        """The PNG of a kept query image (lossless), or None when the id is unknown or evicted."""
        if QUERY_ID.fullmatch(query_id) is None:
            return None
        pixels = self._images.get(query_id)
        if pixels is None:
            return None
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def query_url(query_id: str) -> str:
    """URL of a kept query image."""
    return f"/api/queries/{query_id}.png"
