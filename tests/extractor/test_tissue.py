"""Tissue masks: known synthetic layouts, exact per-square fractions, the real slide's white edges."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2hsv

from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.extractor.slide import open_slide
from mvh.extractor.tissue import TissueMask, detect_tissue, saturation_value

MPP = 0.5
RECTS = [(160, 240, 880, 800), (1100, 300, 1400, 600)]


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tissue") / "two_pieces.tiff"
    return write_synthetic_slide(path, 1536, 1024, mpp=MPP, tissue_rects=RECTS, levels=3, seed=2)


def _rect_mask(shape: tuple[int, int], downsample: float, rects) -> np.ndarray:
    """Mask pixels whose centre lies inside a level-0 rectangle."""
    rows = (np.arange(shape[0]) + 0.5) * downsample
    cols = (np.arange(shape[1]) + 0.5) * downsample
    out = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in rects:
        out |= ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    return out


def test_mask_matches_known_tissue_layout(slide_path) -> None:
    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide, target_mpp=8.0)
    assert tissue.downsample == 16.0 and tissue.mpp == pytest.approx(8.0)
    assert tissue.shape == (1024 // 16, 1536 // 16)
    expected = _rect_mask(tissue.shape, tissue.downsample, RECTS)
    iou = (tissue.mask & expected).sum() / (tissue.mask | expected).sum()
    assert iou > 0.95
    assert not tissue.mask[:5].any() and not tissue.mask[:, -5:].any()  # glass stays background


def test_blank_slide_has_no_tissue(tmp_path) -> None:
    path = write_synthetic_slide(tmp_path / "blank.tiff", 512, 512, mpp=1.0, tissue_rects=[], levels=2)
    with open_slide(path) as slide:
        assert not detect_tissue(slide).mask.any()


def test_small_speck_is_removed_but_hole_in_tissue_is_filled(tmp_path) -> None:
    # A 16x16 um speck (below min_object_um2) and tissue with a 24x24 um hole (below min_hole_um2).
    rects = [
        (40, 40, 72, 72),
        (300, 100, 900, 300),
        (300, 348, 900, 700),
        (300, 300, 600, 348),
        (648, 300, 900, 348),
    ]
    path = write_synthetic_slide(tmp_path / "speck.tiff", 1024, 800, mpp=0.5, tissue_rects=rects, levels=2)
    with open_slide(path) as slide:
        tissue = detect_tissue(slide, target_mpp=4.0)
    d = tissue.downsample
    assert not tissue.mask[: int(100 / d), : int(100 / d)].any()
    assert tissue.mask[int(324 / d), int(624 / d)]


def test_fraction_in_is_exact_area_integral() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((12, 15)) > 0.5
    tissue = TissueMask(mask=mask, downsample=8.0, mpp=4.0, threshold=0.1)
    x = rng.uniform(-10, 100, size=40)
    y = rng.uniform(-10, 80, size=40)
    size = 21.0
    # Independent reference: the mask blown up to 1/4-px cells, squares snapped to that lattice.
    fine = np.kron(mask, np.ones((32, 32), dtype=bool))
    xs, ys = np.round(x * 4).astype(int), np.round(y * 4).astype(int)
    ref = []
    for a, b in zip(xs, ys, strict=True):
        window = np.zeros((84, 84), dtype=float)
        r0, c0 = max(b, 0), max(a, 0)
        sub = fine[r0 : b + 84, c0 : a + 84]
        window[r0 - b : r0 - b + sub.shape[0], c0 - a : c0 - a + sub.shape[1]] = sub
        ref.append(window.mean())
    got = tissue.fraction_in(xs / 4, ys / 4, size)
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.real_data
def test_real_slide_rejects_white_edges(sample_slide) -> None:
    with open_slide(sample_slide) as slide:
        tissue = detect_tissue(slide)
    m = tissue.mask
    assert 7.5 <= tissue.mpp <= 16.0  # "about 8-16 um/px"
    assert 0.25 < tissue.tissue_fraction < 0.6
    # The left and right margins are glass; the lower middle of the section is tissue.
    assert m[:, : m.shape[1] // 6].mean() < 0.05
    assert m[:, -m.shape[1] // 12 :].mean() < 0.05
    h, w = m.shape
    assert m[int(0.85 * h) : int(0.95 * h), int(0.35 * w) : int(0.65 * w)].mean() > 0.9


def test_narrow_glass_margin_is_not_a_hole(tmp_path) -> None:
    # 56 um of glass on the right: smaller than min_hole_um2, but it touches the border, so it is not a hole.
    path = write_synthetic_slide(tmp_path / "margin.tiff", 672, 448, 0.25, [(0, 0, 448, 448)], levels=2)
    with open_slide(path) as slide:
        tissue = detect_tissue(slide)
    cols = (np.arange(tissue.shape[1]) + 0.5) * tissue.downsample
    assert tissue.mask[:, cols < 420].all() and not tissue.mask[:, cols > 470].any()


def test_saturation_value_are_rgb2hsv_s_and_v_exactly() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    rgb[0, :4] = [[0, 0, 0], [255, 255, 255], [7, 7, 7], [1, 0, 0]]  # black, white, grey: S = 0 cases
    s, v = saturation_value(rgb)
    hsv = rgb2hsv(rgb)
    np.testing.assert_array_equal(s, hsv[..., 1])
    np.testing.assert_array_equal(v, hsv[..., 2])
