"""Opening slides and plain images, mpp from metadata, pixels as RGB, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from mvh.core.synthetic_slides import synthetic_he_rgb, write_plain_image, write_synthetic_slide
from mvh.errors import MissingMppError, SlideError
from mvh.extractor.slide import _mpp_from_properties, open_slide, rgba_to_rgb

RECT = (96, 64, 400, 300)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("slide") / "syn.tiff"
    image = synthetic_he_rgb(512, 384, [RECT], seed=1)
    write_synthetic_slide(path, 512, 384, mpp=0.263, levels=3, compression="deflate", image=image, tile=128)
    return path, image


def test_synthetic_tiff_opens_with_its_pyramid_and_mpp(synthetic) -> None:
    path, image = synthetic
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.263, rel=1e-6)
        assert slide.mpp_source == "metadata"
        assert slide.slide_id == "syn"
        assert slide.level_count == 3
        assert slide.level_dimensions == ((512, 384), (256, 192), (128, 96))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        region = slide.read_region((10, 20), 0, (50, 40))
        assert region.dtype == np.uint8 and region.shape == (40, 50, 3)
        np.testing.assert_array_equal(region, image[20:60, 10:60])  # lossless deflate: exact pixels
        np.testing.assert_array_equal(slide.read_level(1), tifffile.imread(path, key=1))


def test_tissue_is_pink_and_background_white(synthetic) -> None:
    path, _ = synthetic
    with open_slide(path) as slide:
        inside = slide.read_region((RECT[0] + 20, RECT[1] + 20), 0, (64, 64)).reshape(-1, 3).mean(0)
        outside = slide.read_region((430, 320), 0, (64, 64)).reshape(-1, 3).mean(0)
    assert inside[0] > inside[1] + 30 and inside[2] > inside[1]  # eosin/haematoxylin: red and blue over green
    assert outside.min() > 235


def test_user_mpp_overrides_metadata(synthetic) -> None:
    path, _ = synthetic
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.mpp_source == "user"


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_invalid_user_mpp_is_refused(synthetic, bad: float) -> None:
    with pytest.raises(SlideError, match="--slide-mpp"):
        open_slide(synthetic[0], mpp=bad)


def test_png_without_mpp_fails_with_the_fix(tmp_path) -> None:
    path = write_plain_image(tmp_path / "tile.png", 64, 48)
    with pytest.raises(MissingMppError) as info:
        open_slide(path)
    message = str(info.value)
    assert str(path) in message and "--slide-mpp" in message and "\n" not in message


def test_png_with_user_mpp_is_a_single_level_slide(tmp_path) -> None:
    path = write_plain_image(tmp_path / "tile.png", 64, 48, seed=3)
    expected = np.asarray(Image.open(path).convert("RGB"))
    with open_slide(path, mpp=0.5) as slide:
        assert slide.dimensions == (64, 48) and slide.level_count == 1 and slide.level_downsamples == (1.0,)
        np.testing.assert_array_equal(slide.read_level(0), expected)
        # Out-of-bounds area reads as white, like OpenSlide's transparent border composited on white.
        edge = slide.read_region((50, 40), 0, (20, 20))
        np.testing.assert_array_equal(edge[:8, :14], expected[40:48, 50:64])
        assert (edge[8:] == 255).all() and (edge[:, 14:] == 255).all()


def test_rgba_png_composited_on_white(tmp_path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[0, :, 3] = 255
    rgba[1, :, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with open_slide(tmp_path / "a.png", mpp=1.0) as slide:
        rgb = slide.read_level(0)
    np.testing.assert_array_equal(rgb[0, 0], [200, 0, 0])
    a = 128 / 255
    np.testing.assert_allclose(rgb[1, 0], [200 * a + 255 * (1 - a), 255 * (1 - a), 255 * (1 - a)], atol=1)
    np.testing.assert_array_equal(rgb[2:], 255)
    np.testing.assert_array_equal(rgba_to_rgb(rgba)[1:2], rgb[1:2])


@pytest.mark.parametrize(
    ("resolution", "unit", "mpp"),
    [((25_400 / 0.5, 25_400 / 0.5), "INCH", 0.5), ((1e4 / 0.25, 1e4 / 0.25), "CENTIMETER", 0.25)],
)
def test_plain_tiff_resolution_units(tmp_path, resolution, unit, mpp) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(
        path, synthetic_he_rgb(40, 30), photometric="rgb", resolution=resolution, resolutionunit=unit
    )
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(mpp, rel=1e-6)


@pytest.mark.parametrize(
    ("props", "mpp"),
    [
        ({"openslide.mpp-x": "0.2498", "openslide.mpp-y": "0.2502", "aperio.MPP": "0.3"}, (0.2498, 0.2502)),
        ({"aperio.MPP": "0.4990", "tiff.ResolutionUnit": "inch"}, (0.499, 0.499)),
        (
            {"tiff.XResolution": "40000", "tiff.YResolution": "40000", "tiff.ResolutionUnit": "centimeter"},
            (0.25, 0.25),
        ),
        (
            {"tiff.XResolution": "50800", "tiff.YResolution": "101600", "tiff.ResolutionUnit": "inch"},
            (0.5, 0.25),
        ),
        ({"tiff.XResolution": "72", "tiff.YResolution": "72", "tiff.ResolutionUnit": "inch"}, None),
        ({"tiff.XResolution": "4000", "tiff.YResolution": "4000", "tiff.ResolutionUnit": "none"}, None),
        ({"aperio.MPP": "not a number"}, None),
        ({}, None),
    ],
)
def test_mpp_metadata_precedence_and_units(props: dict, mpp) -> None:
    got = _mpp_from_properties(props)
    assert got == (pytest.approx(mpp) if mpp is not None else None)


def test_screen_dpi_is_not_a_scan_resolution(tmp_path) -> None:
    path = tmp_path / "screen.tif"
    tifffile.imwrite(
        path, synthetic_he_rgb(40, 30), photometric="rgb", resolution=(72, 72), resolutionunit="INCH"
    )
    with pytest.raises(MissingMppError):
        open_slide(path)


def test_corrupt_and_missing_files_name_the_file(tmp_path, synthetic) -> None:
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(SlideError, match="junk.svs: cannot be opened"):
        open_slide(junk)
    truncated = tmp_path / "cut.tiff"
    truncated.write_bytes(synthetic[0].read_bytes()[:2000])
    with pytest.raises(SlideError, match="cut.tiff"):
        open_slide(truncated).read_level(0)
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "absent.svs")


@pytest.mark.real_data
def test_real_slide(sample_slide) -> None:
    with open_slide(sample_slide) as slide:
        assert slide.mpp == pytest.approx(0.499)
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp_source == "metadata"
        assert set(slide.associated_images) == {"label", "macro", "thumbnail"}
        assert all(a.dtype == np.uint8 and a.shape[2] == 3 for a in slide.associated_images.values())
        thumb = slide.thumbnail(256)
        assert thumb.shape == (256, round(2220 * 256 / 2967), 3)


def test_open_slide_turns_any_decoder_exception_into_a_slide_error(tmp_path, monkeypatch) -> None:
    from mvh.extractor import slide as slide_module

    def explode(self) -> None:
        raise ZeroDivisionError("division by zero in a decoder")

    path = tmp_path / "x.tif"
    path.write_bytes(b"II*\0" + bytes(64))
    monkeypatch.setattr(slide_module.Slide, "_open", explode)
    with pytest.raises(SlideError, match=r"x.tif: cannot be opened \(ZeroDivisionError: division by zero"):
        slide_module.open_slide(path)


def test_a_tiff_header_without_pages_is_a_slide_error(tmp_path) -> None:
    path = tmp_path / "empty_pages.tif"
    path.write_bytes(b"II*\0" + bytes(64))
    with pytest.raises(SlideError, match="empty_pages.tif: cannot be opened"):
        open_slide(path, mpp=0.5)
