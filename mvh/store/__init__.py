"""The embedding store: one LanceDB database of tile embeddings, where it lives, and what it holds.

Public face: `EmbeddingStore` (open, create, read, write), `StoreFingerprint`, `StoreLocation` and
`parse_location`, `verify_store`. The names are resolved on first use, so importing a light module of
the package (`mvh.store.location`, `mvh.store.slide_ids`) does not load LanceDB.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EmbeddingStore": "mvh.store.store",
    "StoreInfo": "mvh.store.info",
    "StoreFingerprint": "mvh.store.schema",
    "DONE": "mvh.store.schema",
    "FAILED": "mvh.store.schema",
    "RANDOM_INIT": "mvh.store.schema",
    "tiles_schema": "mvh.store.schema",
    "embeddings_to_arrow": "mvh.store.schema",
    "embeddings_to_numpy": "mvh.store.schema",
    "embedding_checksum": "mvh.store.schema",
    "StoreLocation": "mvh.store.location",
    "parse_location": "mvh.store.location",
    "verify_store": "mvh.store.integrity",
    "VerifyReport": "mvh.store.integrity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mvh.store' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
