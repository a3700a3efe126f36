"""Shared fixtures: paths of the real data in ../shared (tests skip with a reason when absent), torch on one
thread, and the fingerprint of a store of synthetic embeddings.

The sample slide also comes from the user cache, where `mvh sample` puts it, so that a user without
../shared runs the real-slide tests after one `mvh sample`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mvh.extractor.sample import SAMPLE_NAME, cache_dir
from mvh.store import StoreFingerprint

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLE_SLIDE = SHARED / "data" / "CMU-1-Small-Region.svs"
HE_TILE = SHARED / "data" / "he_tile_1000px.png"
GOLDEN = SHARED / "reference" / "golden_small.pt"
KEYS_TSV = SHARED / "reference" / "mv_hybrid_state_dict_keys.tsv"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the project's ../shared folder is absent)")
    return path


def sample_slide_location(shared: Path = SAMPLE_SLIDE) -> Path | None:
    """The sample slide in ../shared, else in the user cache (`mvh sample` puts it there), else None."""
    for candidate in (shared, cache_dir() / SAMPLE_NAME):
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def sample_slide() -> Path:
    """The real H&E slide CMU-1-Small-Region.svs (0.499 um/px), from ../shared or the user cache."""
    found = sample_slide_location()
    if found is None:
        pytest.skip(
            f"{SAMPLE_NAME} is neither in {SAMPLE_SLIDE.parent} nor in {cache_dir()}: run `mvh sample`"
        )
    return found


@pytest.fixture(scope="session")
def he_tile() -> Path:
    """A real 1000x1000 H&E tile (PNG, no mpp)."""
    return _require(HE_TILE)


@pytest.fixture(scope="session")
def golden_path() -> Path:
    """The authors' golden small MV_Hybrid (weights, input, outputs)."""
    return _require(GOLDEN)


@pytest.fixture(scope="session")
def keys_tsv() -> Path:
    """The authors' full-size MV_Hybrid state-dict keys and shapes."""
    return _require(KEYS_TSV)


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Torch on one thread for a test: tiny models run fastest so, above all on a shared, busy CI machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def synthetic_fingerprint(dim: int, **changes: Any) -> StoreFingerprint:
    """The fingerprint of a store of synthetic embeddings (no model, random-init, 224 px at 0.5 um/px) of
    `dim` values; `changes` set any other field."""
    fields: dict[str, Any] = dict(
        model="synthetic", model_config={}, weights_sha256="random-init", weights_path=None, embed_dim=dim,
        tile_px=224, mpp=0.5, mean=None, std=None,
    )
    fields.update(changes)
    return StoreFingerprint(**fields)


def _deterministic_hypothesis() -> None:
    """Fuzz tests draw the same examples on every run (CI included): a red run is reproducible."""
    from hypothesis import settings

    settings.register_profile("mvh", derandomize=True, database=None)
    settings.load_profile("mvh")


_deterministic_hypothesis()
