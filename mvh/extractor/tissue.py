"""Tissue detection on a low-resolution thumbnail (about 8 um/px).

Stained tissue is saturated, glass is white or grey: threshold HSV saturation with Otsu (kept above a
floor so an empty slide stays empty, and below a ceiling so a slide that is nearly all tissue does not
split eosin from haematoxylin), drop near-black pixels, then close gaps, open away specks, fill small
holes and remove small objects. Sizes are given in micrometres and converted with the mask's um/px.
The mask's pixel (row r, column c) covers level-0 pixels [c * downsample, (c + 1) * downsample) x
[r * downsample, (r + 1) * downsample).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from mvh.extractor.slide import Slide


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask [h, w]; one mask pixel is `downsample` level-0 px (`mpp` um) on a side."""

    mask: np.ndarray
    downsample: float
    mpp: float
    threshold: float

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of the mask."""
        return self.mask.shape  # type: ignore[return-value]

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the mask that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction_in(self, x: np.ndarray, y: np.ndarray, size: float) -> np.ndarray:
        """Exact tissue fraction (float32 [N]) of level-0 squares with top-left (x, y) and side `size` px."""
        # The integral of a piecewise-constant mask is bilinear inside each cell, so bilinear interpolation
        # of the summed-area table at fractional mask coordinates integrates the squares exactly.
        sat = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=np.float64)
        sat[1:, 1:] = self.mask.astype(np.float64).cumsum(0).cumsum(1)
        x0 = np.asarray(x, dtype=np.float64) / self.downsample
        y0 = np.asarray(y, dtype=np.float64) / self.downsample
        s = size / self.downsample
        h, w = self.mask.shape

        def integral(cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
            coords = np.stack([np.clip(cy, 0, h), np.clip(cx, 0, w)])
            return ndimage.map_coordinates(sat, coords, order=1, mode="nearest")

        area = integral(x0 + s, y0 + s) - integral(x0, y0 + s) - integral(x0 + s, y0) + integral(x0, y0)
        return np.clip(area / (s * s), 0.0, 1.0).astype(np.float32)


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value (float64 [h, w]) of RGB uint8 [h, w, 3], as skimage's rgb2hsv computes them.

    Hue is never used: S and V from the channel max and min are several times faster than rgb2hsv and
    the same floats (the same scaling by 1/255, the same subtraction and division).
    """
    scale = 1.0 / 255.0  # skimage's img_as_float multiplies by the reciprocal
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # pairwise max/min: ~10x faster than a reduce over 3
    high = np.maximum(np.maximum(r, g), b).astype(np.float64) * scale
    delta = high - np.minimum(np.minimum(r, g), b).astype(np.float64) * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = np.where(delta == 0.0, 0.0, delta / high)
    return saturation, high


def _padded(op: Callable[..., np.ndarray], mask: np.ndarray, radius: int) -> np.ndarray:
    """A binary morphology `op` with a disk, edge-padded so that tissue cut by the border is not eroded."""
    padded = np.pad(mask, 2 * radius, mode="edge")
    return op(padded, structure=disk(radius))[2 * radius : -2 * radius, 2 * radius : -2 * radius]


def _remove_small_components(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Drop 8-connected components smaller than `min_px` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill background components smaller than `max_px` pixels that do not touch the border (true holes)."""
    if max_px <= 1 or mask.all():
        return mask
    labels, _ = ndimage.label(~mask)
    sizes = np.bincount(labels.ravel())
    fill = sizes < max_px
    fill[0] = False
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    fill[np.unique(border)] = False
    return mask | fill[labels]


def detect_tissue(
    slide: Slide,
    target_mpp: float = 8.0,
    saturation_floor: float = 0.04,
    saturation_ceiling: float = 0.12,
    min_value: float = 0.12,
    close_um: float = 24.0,
    open_um: float = 12.0,
    min_hole_um2: float = 20_000.0,
    min_object_um2: float = 5_000.0,
) -> TissueMask:
    """Tissue mask of a slide from a thumbnail at about `target_mpp` um/px (8-16 recommended)."""
    rgb, downsample = slide.read_downsampled(max(1.0, target_mpp / slide.mpp))
    mpp = slide.mpp * downsample
    return tissue_mask_from_rgb(
        rgb,
        mpp=mpp,
        downsample=downsample,
        saturation_floor=saturation_floor,
        saturation_ceiling=saturation_ceiling,
        min_value=min_value,
        close_um=close_um,
        open_um=open_um,
        min_hole_um2=min_hole_um2,
        min_object_um2=min_object_um2,
    )


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    mpp: float,
    downsample: float = 1.0,
    saturation_floor: float = 0.04,
    saturation_ceiling: float = 0.12,
    min_value: float = 0.12,
    close_um: float = 24.0,
    open_um: float = 12.0,
    min_hole_um2: float = 20_000.0,
    min_object_um2: float = 5_000.0,
) -> TissueMask:
    """Tissue mask of an RGB uint8 [h, w, 3] thumbnail at `mpp` um/px (`downsample` vs level 0)."""
    saturation, value = saturation_value(rgb)
    saturation = ndimage.median_filter(saturation, size=3)
    if saturation.size and np.ptp(saturation) > 0:
        threshold = float(np.clip(threshold_otsu(saturation), saturation_floor, saturation_ceiling))
    else:
        threshold = saturation_floor
    mask = (saturation > threshold) & (value > min_value)

    def px(um: float) -> int:
        return max(0, round(um / mpp))

    if px(close_um):
        mask = _padded(ndimage.binary_closing, mask, px(close_um))
    if px(open_um):
        mask = _padded(ndimage.binary_opening, mask, px(open_um))
    mask = _fill_small_holes(mask, min_hole_um2 / (mpp * mpp))
    mask = _remove_small_components(mask, min_object_um2 / (mpp * mpp))
    return TissueMask(mask=mask, downsample=float(downsample), mpp=float(mpp), threshold=threshold)
