"""Small Aperio-style slides from the benchmark's generator (`mvh.extractor.aperio_writer`).

The texture is the sample slide's tissue when it is there (real H&E), else the synthetic H&E texture,
so the extraction tests run either way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mvh.core.synthetic_slides import synthetic_he_rgb
from mvh.extractor.aperio_writer import texture_from_slide, write_aperio_slide
from tests.conftest import sample_slide_location


@pytest.fixture(scope="session")
def aperio_slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 20x (0.5 um/px, 1920 x 1440) and a 40x (0.25 um/px, 3840 x 2880) slide of the same tissue."""
    folder = tmp_path_factory.mktemp("aperio")
    sample = sample_slide_location()
    box = (720, 1920, 256)
    out = {}
    for name, (width, height, mpp, mag, up) in {
        "small_20x": (1920, 1440, 0.5, 20, 1),
        "small_40x": (3840, 2880, 0.25, 40, 2),
    }.items():
        if sample is not None:
            texture = texture_from_slide(sample, box, scale=up)
        else:
            texture = synthetic_he_rgb(256 * up, 256 * up, seed=3)
        out[name] = write_aperio_slide(folder / f"{name}.svs", texture, width, height, mpp, mag)
    return out
