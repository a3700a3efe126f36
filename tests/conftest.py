"""Shared fixtures: paths of the real data in ../shared (tests skip with a reason when absent).

The sample slide also comes from the user cache, where `mvh sample` puts it, so that a user without
../shared runs the real-slide tests after one `mvh sample`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mvh.extractor.sample import SAMPLE_NAME, cache_dir

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


def _deterministic_hypothesis() -> None:
    """Fuzz tests draw the same examples on every run (CI included): a red run is reproducible."""
    from hypothesis import settings

    settings.register_profile("mvh", derandomize=True, database=None)
    settings.load_profile("mvh")


_deterministic_hypothesis()
