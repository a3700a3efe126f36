"""The direct JPEG tile reader against OpenSlide, and the generated Aperio slides it is benchmarked on.

Tolerance: 0. Both decode the same JPEG bytes with libjpeg-turbo's accurate integer IDCT and the same
colour conversion (none for Aperio's RGB JPEG, YCbCr with fancy upsampling otherwise), so the pixels
are equal, not merely close; a JPEG library that rounded differently (another IDCT or upsampler) would
show here as a difference of a few levels, and the direct reader would then not be OpenSlide's pixels.
"""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.errors import SlideError
from mvh.extractor.jpeg_tiles import JpegPyramid
from mvh.extractor.slide import open_slide

TOLERANCE = 0


def _regions(slide, rng: np.random.Generator, n: int):
    """Random (location, level, size) requests on whole level pixels, some reaching past the edges."""
    for _ in range(n):
        level = int(rng.integers(slide.level_count))
        ds = slide.level_downsamples[level]
        lw, lh = slide.level_dimensions[level]
        lx, ly = int(rng.integers(-64, lw)), int(rng.integers(-64, lh))
        size = (int(rng.integers(1, 600)), int(rng.integers(1, 600)))
        yield (round(lx * ds), round(ly * ds)), level, size


def _assert_same_as_openslide(path, n: int = 30) -> None:
    rng = np.random.default_rng(0)
    with open_slide(path) as direct, open_slide(path, direct=False) as reference:
        assert direct._jpeg is not None and reference._jpeg is None
        for location, level, size in _regions(direct, rng, n):
            got = direct.read_region(location, level, size).astype(np.int16)
            want = reference.read_region(location, level, size).astype(np.int16)
            assert np.abs(got - want).max() <= TOLERANCE, (location, level, size)
        for level in range(direct.level_count):
            np.testing.assert_array_equal(direct.read_level(level), reference.read_level(level))


def test_direct_reader_matches_openslide_on_the_real_slide(sample_slide) -> None:
    _assert_same_as_openslide(sample_slide)  # Aperio, RGB JPEG with shared JPEGTables, 240 px tiles


def test_direct_reader_matches_openslide_on_generated_slides(aperio_slides, tmp_path) -> None:
    for path in aperio_slides.values():
        _assert_same_as_openslide(path)  # Aperio, YCbCr 4:2:0 JPEG, three levels
    generic = write_synthetic_slide(tmp_path / "g.tiff", 700, 500, 0.5, [(50, 50, 600, 450)], levels=3)
    _assert_same_as_openslide(generic)  # generic tiled TIFF, 2x levels


def test_generated_slide_is_aperio_with_mpp_and_objective_power(aperio_slides) -> None:
    path = aperio_slides["small_40x"]
    osr = openslide.OpenSlide(str(path))
    props = osr.properties
    assert props["openslide.vendor"] == "aperio"
    assert float(props["openslide.mpp-x"]) == float(props["openslide.mpp-y"]) == 0.25
    assert props["openslide.objective-power"] == "40"
    assert osr.level_dimensions == ((3840, 2880), (960, 720), (240, 180))
    assert not osr.associated_images  # label-free
    with tifffile.TiffFile(path) as tif:
        pages = [p for p in tif.pages if p.is_tiled]
        assert [(p.tilewidth, p.compression) for p in pages] == [(240, 7)] * 3
    with open_slide(path) as slide:
        tissue = slide.read_region((1920, 1440), 0, (64, 64)).reshape(-1, 3).mean(0)
        glass = slide.read_region((0, 0), 0, (64, 64)).reshape(-1, 3).mean(0)
    assert tissue.min() < 200 and glass.min() > 235  # stained tissue inside, glass in the margin


def test_other_files_and_fractional_positions_go_through_openslide(aperio_slides, tmp_path) -> None:
    deflate = write_synthetic_slide(tmp_path / "d.tiff", 300, 200, 0.5, levels=2, compression="deflate")
    with open_slide(deflate) as slide:
        assert slide._jpeg is None  # not JPEG: OpenSlide reads it
    with (
        open_slide(aperio_slides["small_20x"]) as direct,
        open_slide(aperio_slides["small_20x"], direct=False) as reference,
    ):
        # (6, 10) is not on a level-1 pixel (downsample 4): OpenSlide interpolates, so it answers.
        np.testing.assert_array_equal(
            direct.read_region((6, 10), 1, (50, 40)), reference.read_region((6, 10), 1, (50, 40))
        )


def test_a_corrupt_tile_is_a_slide_error(aperio_slides, tmp_path) -> None:
    path = tmp_path / "corrupt.svs"
    data = bytearray(aperio_slides["small_20x"].read_bytes())
    with tifffile.TiffFile(aperio_slides["small_20x"]) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data[offset : offset + count] = b"\x00" * count
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        assert slide._jpeg is not None
        with pytest.raises(SlideError, match="cannot decode JPEG tile 0 of level 0"):
            slide.read_region((0, 0), 0, (10, 10))


def test_pyramid_refuses_levels_that_differ_from_openslide(aperio_slides) -> None:
    path = aperio_slides["small_20x"]
    assert JpegPyramid.open(path, ((1920, 1440), (480, 360), (120, 90))) is not None
    assert JpegPyramid.open(path, ((1920, 1440), (960, 720))) is None
