"""The store's own embedder for query images: exactly the store's model, weights and preprocessing
(`Embedder.from_fingerprint`), refused when the rebuilt fingerprint differs from the store's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mvh.errors import FingerprintMismatchError, UsageError
from mvh.extractor.embedder import Embedder
from mvh.store import EmbeddingStore
from mvh.tasks.query_image import prepare_query_image


def query_embedder(store: EmbeddingStore, weights: Path | None = None, device: str = "auto") -> Embedder:
    """The store's own model (FingerprintMismatchError when the weights or config differ)."""
    fp = store.fingerprint
    if fp.model.startswith("external:"):  # imported features: no weights file can rebuild their model here
        raise UsageError(
            f"store {store.uri} holds features made by another tool ({fp.model}): an image query needs that "
            "model, which mvh cannot run; query by a stored tile (--query-tile SLIDE:X:Y) or a whole slide "
            "(--query-slide SLIDE)"
        )
    embedder = Embedder.from_fingerprint(fp, weights=weights, device=device)
    rebuilt = embedder.fingerprint(fp.mpp, fp.tile_px, fp.embedding_dtype)
    if not rebuilt.matches(fp):
        raise FingerprintMismatchError(
            f"the query model [{rebuilt.describe()}] differs from store {store.uri} "
            f"[{fp.describe()}]: pass the store's checkpoint with --weights"
        )
    return embedder


def embed_query_image(
    store: EmbeddingStore,
    image: Image.Image,
    query_mpp: float | None = None,
    embedder: Embedder | None = None,
    weights: Path | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embedding [1, dim] of an RGB image, the tile [H, W, 3] it was cut to, and notes."""
    fp = store.fingerprint
    tile, notes = prepare_query_image(image, fp.tile_px, fp.mpp, query_mpp)
    embedder = embedder if embedder is not None else query_embedder(store, weights)
    return embedder.embed_images([tile]), tile, notes
