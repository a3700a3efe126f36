"""Tile grids at an exact um/px: level choice, footprints, coordinates, tissue filter, Parquet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mvh.core.synthetic_slides import synthetic_he_rgb, write_synthetic_slide
from mvh.errors import NoTissueError
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import (
    choose_level,
    make_tile_grid,
    make_tile_grid_at,
    read_tile,
    read_tile_grid,
    write_tile_grid,
)

# Edges sit well inside tiles so that no tile's true tissue fraction is near the 0.25 threshold.
RECT = (440, 220, 1490, 1090)
W, H = 1600, 1300


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tiling") / "rect.tiff"
    return write_synthetic_slide(path, W, H, mpp=0.5, tissue_rects=[RECT], levels=3, seed=4)


def _expected_tiles(size: int, rect=RECT, min_tissue: float = 0.25) -> tuple[set[tuple[int, int]], dict]:
    """Tiles fully inside the slide whose overlap with the rectangle is >= min_tissue, by plain geometry."""
    x0, y0, x1, y1 = rect
    keep, fractions = set(), {}
    for y in range(0, H - size + 1, size):
        for x in range(0, W - size + 1, size):
            ox = max(0, min(x + size, x1) - max(x, x0))
            oy = max(0, min(y + size, y1) - max(y, y0))
            f = ox * oy / size**2
            assert abs(f - min_tissue) > 0.08, "test geometry puts a tile on the threshold"
            fractions[(x, y)] = f
            if f >= min_tissue:
                keep.add((x, y))
    return keep, fractions


@pytest.mark.parametrize(("mpp", "size_l0", "level"), [(0.5, 224, 0), (1.0, 448, 1)])
def test_grid_covers_the_rectangle_exactly(slide_path, mpp: float, size_l0: int, level: int) -> None:
    with open_slide(slide_path) as slide:
        grid = make_tile_grid(slide, mpp=mpp, tile_px=224)
    expected, fractions = _expected_tiles(size_l0)
    assert grid.size_l0 == size_l0 and grid.level == level and grid.read_px == 224
    assert set(zip(grid.x.tolist(), grid.y.tolist(), strict=True)) == expected
    assert len(grid) == len(expected)
    # Row-major order, and the mask's fraction agrees with the geometry.
    assert list(zip(grid.y.tolist(), grid.x.tolist(), strict=True)) == sorted(
        zip(grid.y.tolist(), grid.x.tolist(), strict=True)
    )
    got = [fractions[(x, y)] for x, y in zip(grid.x.tolist(), grid.y.tolist(), strict=True)]
    np.testing.assert_allclose(grid.tissue_fraction, got, atol=0.07)
    assert grid.tile_ids[0] == f"rect:{grid.x[0]}:{grid.y[0]}:{size_l0}"


def test_tile_counts_at_both_resolutions(slide_path) -> None:
    with open_slide(slide_path) as slide:
        n05 = len(make_tile_grid(slide, mpp=0.5))
        n10 = len(make_tile_grid(slide, mpp=1.0))
    # 224 px: columns 448..1344 (x=224 holds 8 px of tissue, x=1344 holds 146), rows 224..896 -> 5 x 4.
    # 448 px: columns 448, 896 (x=0 holds 8 px, x=1344 does not fit in 1600), rows 0 (228 px), 448 -> 2 x 2.
    assert (n05, n10) == (20, 4)


def test_overlap_sets_the_stride(slide_path) -> None:
    with open_slide(slide_path) as slide:
        grid = make_tile_grid(slide, mpp=0.5, tile_px=224, overlap=56, min_tissue=0.0)
    assert np.unique(grid.x).tolist() == list(range(0, W - 224 + 1, 168))
    assert np.unique(grid.y).tolist() == list(range(0, H - 224 + 1, 168))


def test_level_is_the_coarsest_not_coarser_than_target(tmp_path) -> None:
    path = write_synthetic_slide(
        tmp_path / "p.tiff", 512, 512, mpp=0.25, tissue_rects=[(0, 0, 512, 512)], levels=3
    )
    with open_slide(path) as slide:
        assert [choose_level(slide, m) for m in (0.2, 0.25, 0.4, 0.5, 0.9, 1.0, 4.0)] == [0, 0, 0, 1, 1, 2, 2]
    with open_slide(path, mpp=0.2527) as slide:  # level 1 would be 0.5054 um/px: coarser than 0.5
        assert choose_level(slide, 0.5) == 0


def test_same_physical_footprint_across_scan_resolutions(tmp_path) -> None:
    # One specimen scanned at 0.25 um/px and at 0.5 um/px (2x box-downsampled), plus a 0.263 um/px scan.
    fine = synthetic_he_rgb(1344, 1344, None, seed=5)
    coarse = np.asarray(Image.fromarray(fine).reduce(2))
    p25 = write_synthetic_slide(
        tmp_path / "s25.tiff", 1344, 1344, 0.25, levels=3, compression="deflate", image=fine
    )
    p50 = write_synthetic_slide(
        tmp_path / "s50.tiff", 672, 672, 0.5, levels=2, compression="deflate", image=coarse
    )
    p263 = write_synthetic_slide(
        tmp_path / "s263.tiff", 1024, 1024, 0.263, tissue_rects=[(0, 0, 1024, 1024)], levels=2
    )
    with open_slide(p25) as s25, open_slide(p50) as s50, open_slide(p263) as s263:
        g25, g50, g263 = (make_tile_grid(s, mpp=0.5, tile_px=224) for s in (s25, s50, s263))
        assert g25.size_l0 * s25.mpp == g50.size_l0 * s50.mpp == 112.0
        assert abs(g263.size_l0 * s263.mpp - 112.0) <= s263.mpp / 2
        assert (g25.level, g25.read_px, g50.level, g50.read_px) == (1, 224, 0, 224)
        assert (g263.size_l0, g263.level, g263.read_px) == (426, 0, 426)
        assert len(g25) == len(g50) == 9
        np.testing.assert_array_equal(g25.x, 2 * g50.x)
        # The same tissue: both tiles show the same 112 um of the specimen.
        for i in (0, 4, 8):
            a = read_tile(s25, g25, i).astype(float)
            b = read_tile(s50, g50, i).astype(float)
            assert a.shape == b.shape == (224, 224, 3)
            assert np.abs(a - b).mean() < 3.0
        shifted = read_tile(s50, g50, 1).astype(float)
        assert np.abs(read_tile(s25, g25, 0).astype(float) - shifted).mean() > 10.0
        assert read_tile(s263, g263, 0).shape == (224, 224, 3)


def test_no_tissue_raises(tmp_path) -> None:
    path = write_synthetic_slide(tmp_path / "blank.tiff", 600, 600, mpp=0.5, tissue_rects=[], levels=1)
    with open_slide(path) as slide, pytest.raises(NoTissueError, match="blank.tiff"):
        make_tile_grid(slide)


def test_grid_at_given_coordinates(slide_path) -> None:
    with open_slide(slide_path) as slide:
        grid = make_tile_grid_at(
            slide, x=[10.4, 500], y=[20, 700.6], mpp=1.0, tile_px=112, tile_ids=["a", "b"]
        )
        assert grid.tile_ids == ["a", "b"]
        assert grid.x.tolist() == [10, 500] and grid.y.tolist() == [20, 701]
        assert (grid.size_l0, grid.level, grid.read_px) == (224, 1, 112)
        assert np.isnan(grid.tissue_fraction).all()
        tile = read_tile(slide, grid, 1)
        region = slide.read_region((500, 701), 1, (112, 112))
    np.testing.assert_array_equal(tile, region)


def test_deterministic_ids_and_parquet_round_trip(slide_path, tmp_path) -> None:
    with open_slide(slide_path) as slide:
        a = make_tile_grid(slide, mpp=0.5)
        b = make_tile_grid(slide, mpp=0.5)
    assert a.tile_ids == b.tile_ids and len(set(a.tile_ids)) == len(a)
    path = write_tile_grid(a, tmp_path / "g" / "rect.tiles.parquet")
    back = read_tile_grid(path)
    assert back.meta() == a.meta()
    pd.testing.assert_frame_equal(back.to_frame(), a.to_frame())
    assert list(pd.read_parquet(path).columns) == [
        "tile_id",
        "slide_id",
        "x",
        "y",
        "size_l0",
        "tile_px",
        "mpp",
        "level",
        "tissue_fraction",
    ]


@pytest.mark.real_data
def test_real_slide_tiles(sample_slide) -> None:
    with open_slide(sample_slide) as slide:
        grid = make_tile_grid(slide, mpp=0.5, tile_px=224)
        tile = read_tile(slide, grid, 0)
    assert grid.size_l0 == 224 and grid.level == 0
    # 117 candidate 224-px tiles; about 37% of the area is tissue, so roughly 40-70 tiles qualify (54 here).
    assert 40 <= len(grid) <= 70
    assert (grid.tissue_fraction >= 0.25).all()
    assert tile.shape == (224, 224, 3) and tile.dtype == np.uint8
    assert not ((grid.x < 300) & (grid.y < 300)).any()  # the top-left corner is glass
