"""Tiny pretraining setups shared by the pretrain tests (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY_ARCH = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_settings(tiles: Path, out: Path, **changes: object) -> dict:
    """Settings of a tiny MV_Hybrid run: 48 px global crops (9 tokens), 2 local crops, 64 prototypes."""
    settings = dict(
        inputs=[str(tiles)],
        out=str(out),
        model="mv_hybrid_tiny",
        model_overrides=dict(TINY_ARCH),
        epochs=2,
        batch_size=4,
        lr=0.02,
        global_size=48,
        local_size=32,
        local_crops=2,
        prototypes=64,
        head_hidden_dim=64,
        head_bottleneck_dim=32,
        workers=0,
        save_every=100,
    )
    settings.update(changes)
    return settings


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """Tiny models run fastest on one thread, above all on a shared, oversubscribed CI machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synthetic_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 RGB tiles (64 px) of two kinds: pink stripes and purple blobs, with noise."""
    folder = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(16):
        if i % 2:
            base = np.where(((xx + 3 * i) // 6) % 2 == 0, 230, 180)[..., None] * np.array([1.0, 0.6, 0.8])
        else:
            blobs = np.sin(xx / (3 + i % 5)) * np.cos(yy / 4) > 0.2
            base = np.where(blobs, 120, 220)[..., None] * np.array([0.7, 0.4, 0.9])
        tile = np.clip(base + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(tile).save(folder / f"tile_{i:02d}.png")
    return folder
