"""Synthetic H&E-like slides for tests, benchmarks and demos.

`write_synthetic_slide` writes a pyramidal tiled TIFF that OpenSlide's generic-tiff reader opens: every
level is a top-level tiled IFD (level 0 first, then 2x reductions marked as reduced images), and level 0
carries XResolution/YResolution in pixels per centimetre, which OpenSlide reports as
`openslide.mpp-x/y`. Tissue (pink eosin stroma with purple nuclei) fills the given level-0 rectangles on
a near-white glass background, so a test knows exactly where tissue is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

Rect = tuple[int, int, int, int]

_GLASS = np.array([246.0, 245.0, 247.0], dtype=np.float32)
_EOSIN = np.array([236.0, 160.0, 196.0], dtype=np.float32)
_EOSIN_DENSE = np.array([214.0, 112.0, 168.0], dtype=np.float32)
_HEMATOXYLIN = np.array([92.0, 52.0, 140.0], dtype=np.float32)


def synthetic_he_rgb(
    width: int, height: int, tissue_rects: Sequence[Rect] | None = None, seed: int = 0
) -> np.ndarray:
    """Render an H&E-like RGB image: uint8 [height, width, 3], tissue inside `tissue_rects` (all if None)."""
    rng = np.random.default_rng(seed)
    tissue = np.zeros((height, width), dtype=bool)
    if tissue_rects is None:
        tissue[:] = True
    for x0, y0, x1, y1 in tissue_rects or ():
        tissue[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True

    # Low-frequency stain density, and nuclei as thresholded blobs of a sparse impulse field.
    density = ndimage.gaussian_filter(rng.standard_normal((height, width)).astype(np.float32), 12.0)
    density = np.clip(0.5 + density / (4.0 * density.std() + 1e-6), 0.0, 1.0)[..., None]
    impulses = (rng.random((height, width)) < 1.0 / 350.0).astype(np.float32)
    blobs = ndimage.gaussian_filter(impulses, 2.2)
    nuclei = np.clip((blobs - 0.012) / 0.012, 0.0, 1.0)[..., None]

    stroma = _EOSIN + (_EOSIN_DENSE - _EOSIN) * density
    rgb = stroma + (_HEMATOXYLIN - stroma) * nuclei
    rgb += rng.normal(0.0, 6.0, size=rgb.shape).astype(np.float32)
    glass = _GLASS + rng.normal(0.0, 1.5, size=rgb.shape).astype(np.float32)
    out = np.where(tissue[..., None], rgb, glass)
    return np.clip(out, 0, 255).astype(np.uint8)


def write_synthetic_slide(
    path: str | Path,
    width: int,
    height: int,
    mpp: float,
    tissue_rects: Sequence[Rect] = (),
    levels: int = 3,
    seed: int = 0,
    tile: int = 256,
    compression: str = "jpeg",
    image: np.ndarray | None = None,
) -> Path:
    """Write a pyramidal tiled TIFF (2x levels) at `mpp` um/px with tissue in `tissue_rects`; return its path.

    `compression` is "jpeg" (small, lossy) or "deflate" (lossless, larger); `image` (uint8 [height, width, 3])
    replaces the rendered H&E texture when given.
    """
    if tile % 16:
        raise ValueError(f"tile={tile} must be a multiple of 16 (TIFF tiles)")
    codec = {"jpeg": ("jpeg", {"level": 90}), "deflate": ("zlib", {})}.get(compression)
    if codec is None:
        raise ValueError(f"compression={compression!r}: use 'jpeg' or 'deflate'")
    path = Path(path)
    rgb = image if image is not None else synthetic_he_rgb(width, height, tissue_rects, seed)
    if rgb.shape != (height, width, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [{height}, {width}, 3], got {rgb.dtype} {rgb.shape}")

    pixels_per_cm = 1e4 / mpp
    level_img = Image.fromarray(rgb)
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for level in range(levels):
            if level:
                if min(level_img.size) < 2:
                    break
                level_img = level_img.reduce(2)
            factor = 2**level
            tif.write(
                np.asarray(level_img),
                photometric="rgb",
                tile=(tile, tile),
                compression=codec[0],
                compressionargs=codec[1],
                resolution=(pixels_per_cm / factor, pixels_per_cm / factor),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                metadata=None,
                software="mvh.synthetic",
            )
    return path


def write_plain_image(
    path: str | Path,
    width: int = 512,
    height: int = 512,
    tissue_rects: Sequence[Rect] | None = None,
    seed: int = 0,
) -> Path:
    """Write an H&E-like PNG/JPEG (format from the suffix) with no resolution metadata; return its path."""
    path = Path(path)
    Image.fromarray(synthetic_he_rgb(width, height, tissue_rects, seed)).save(path)
    return path
