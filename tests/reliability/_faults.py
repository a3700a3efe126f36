"""Shared helpers of the reliability suite: small stores and on-disk damage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mvh.store import EmbeddingStore, StoreFingerprint
from tests.conftest import synthetic_fingerprint

DIM = 8


def fingerprint(**changes: object) -> StoreFingerprint:
    """A small float32 fingerprint of dim DIM."""
    return synthetic_fingerprint(DIM, **{"model": "mv_hybrid_tiny", "model_config": {"depth": 2}, **changes})


def tiles(slide_id: str, n: int) -> pd.DataFrame:
    """`n` tiles in a row at 448 px steps."""
    x = np.arange(n) * 448
    return pd.DataFrame(
        {
            "tile_id": [f"{slide_id}:{v}:0:448" for v in x],
            "x": x,
            "y": 0,
            "tile_px": 224,
            "mpp": 0.5,
            "tissue_fraction": 1.0,
        }
    )


def distinct(n: int, seed: int) -> np.ndarray:
    """Embeddings [n, DIM] whose byte pattern occurs nowhere else in a store file."""
    return np.random.default_rng(seed).uniform(1000.0, 2000.0, size=(n, DIM)).astype(np.float32)


def store_with(uri: Path, slides: dict[str, np.ndarray]) -> EmbeddingStore:
    """A new store holding `slides` (id -> embeddings)."""
    store = EmbeddingStore.create(uri, fingerprint())
    for sid, emb in slides.items():
        store.add_slide({"slide_id": sid, "path": f"/x/{sid}.svs"}, tiles(sid, len(emb)), emb)
    return store


def rot_bytes(store_dir: Path, emb: np.ndarray, row: int, value: float = float("nan")) -> None:
    """Overwrite row `row` of `emb` where its bytes lie in the tiles data files (simulated bit rot)."""
    needle = np.ascontiguousarray(emb[row], dtype="<f4").tobytes()
    for path in sorted((store_dir / "tiles.lance" / "data").rglob("*.lance")):
        data = bytearray(path.read_bytes())
        at = data.find(needle)
        if at >= 0:
            data[at : at + len(needle)] = np.full(DIM, value, dtype="<f4").tobytes()
            path.write_bytes(bytes(data))
            return
    raise AssertionError("embedding bytes not found in the tiles data files")
