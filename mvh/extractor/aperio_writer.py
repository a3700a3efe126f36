"""Aperio-style pyramidal SVS files made from a real H&E texture, for tests and benchmarks.

`write_aperio_slide` writes what an Aperio scanner writes for the image pyramid: JPEG-compressed tiles
(240 px; YCbCr 4:2:0, tifffile's JPEG default, as most scanners write), levels at 1/4 and 1/16 of level 0,
and a first
ImageDescription starting with "Aperio Image Library" that carries `AppMag` and `MPP`, so OpenSlide opens
it as an `aperio` slide with its um/px and objective power. No label, macro or thumbnail image is written.

The picture is a texture (a tissue-dense crop of a real slide, `texture_from_slide`) tiled with mirroring
(no seams) inside a rounded rectangle, on flat glass outside it: the background margins. Tiles are made
on demand from the texture, so a 40x slide of gigapixels never has to fit in memory. Level k is the same
construction from the texture block-averaged by the level's downsample (texture sides are multiples of
it, so mirrored tiling and block averaging commute).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from mvh.extractor.slide import open_slide

GLASS = (243, 242, 245)
# The densest tissue of CMU-1-Small-Region.svs (98% tissue by mvh's detector): level-0 x, y, side.
SAMPLE_TISSUE_BOX = (720, 1920, 1024)


def texture_from_slide(
    path: str | Path, box: tuple[int, int, int] = SAMPLE_TISSUE_BOX, scale: int = 1
) -> np.ndarray:
    """A square crop (x, y, side) of a slide's level 0 as RGB uint8, upsampled `scale` times (bicubic)."""
    x, y, side = box
    with open_slide(path) as slide:
        crop = slide.read_region((x, y), 0, (side, side))
    if scale == 1:
        return crop
    return np.asarray(Image.fromarray(crop).resize((side * scale,) * 2, Image.Resampling.BICUBIC))


def _mirror_index(start: int, length: int, period: int) -> np.ndarray:
    """Indices into a texture of `period` px for positions start..start+length, mirrored at each edge."""
    i = np.arange(start, start + length) % (2 * period)
    return np.where(i < period, i, 2 * period - 1 - i)


def _in_tissue(ys: np.ndarray, xs: np.ndarray, width: int, height: int, margin: float) -> np.ndarray:
    """Mask [len(ys), len(xs)]: inside a rounded rectangle inset by `margin` of the smaller side."""
    inset = margin * min(width, height)
    radius = 2 * inset
    x0, x1, y0, y1 = inset + radius, width - inset - radius, inset + radius, height - inset - radius
    dx = np.maximum(np.maximum(x0 - xs, xs - x1), 0.0)[None, :]
    dy = np.maximum(np.maximum(y0 - ys, ys - y1), 0.0)[:, None]
    return dx * dx + dy * dy <= radius * radius


def _level_tiles(
    texture: np.ndarray, width: int, height: int, downsample: int, tile: int, margin: float
) -> Iterator[np.ndarray]:
    """The tiles of one level, row-major, each uint8 [tile, tile, 3] (edge tiles padded with glass)."""
    period = texture.shape[0]
    w, h = width // downsample, height // downsample
    glass = np.array(GLASS, dtype=np.uint8)
    for ty in range(0, h, tile):
        rows = _mirror_index(ty, tile, period)
        ys = (np.arange(ty, ty + tile) + 0.5) * downsample
        band = texture[rows]
        for tx in range(0, w, tile):
            out = band[:, _mirror_index(tx, tile, period)]
            xs = (np.arange(tx, tx + tile) + 0.5) * downsample
            inside = _in_tissue(ys, xs, width, height, margin)
            inside &= (ys < height)[:, None] & (xs < width)[None, :]
            out[~inside] = glass
            yield out


def write_aperio_slide(
    path: str | Path,
    texture: np.ndarray,
    width: int,
    height: int,
    mpp: float,
    app_mag: int,
    margin: float = 0.05,
    tile: int = 240,
    downsamples: Sequence[int] = (1, 4, 16),
    quality: int = 80,
) -> Path:
    """Write a pyramidal Aperio SVS of `width` x `height` px at `mpp` um/px with tissue from `texture`."""
    side = texture.shape[0]
    if texture.ndim != 3 or texture.shape != (side, side, 3) or texture.dtype != np.uint8:
        raise ValueError(f"texture must be square uint8 [s, s, 3], got {texture.dtype} {texture.shape}")
    if tile % 16 or any(side % d or width % d or height % d for d in downsamples):
        raise ValueError(
            f"tile {tile} must be a multiple of 16; texture side {side}, width {width} and height "
            f"{height} multiples of every downsample {tuple(downsamples)}"
        )
    path = Path(path)
    big = width * height * 3 > 2**31  # past 2 GiB raw, JPEG offsets may pass 4 GiB on busy tissue
    description = (
        f"Aperio Image Library v12.0.0 (mvh test slide)\r\n{width}x{height} ({tile}x{tile}) "
        f"JPEG/RGB Q={quality}|AppMag = {app_mag}|MPP = {mpp:.4f}|Filename = {path.stem}"
    )
    with tifffile.TiffWriter(path, bigtiff=big) as tif:
        for level, ds in enumerate(downsamples):
            level_texture = np.asarray(Image.fromarray(texture).reduce(ds)) if ds > 1 else texture
            tif.write(
                _level_tiles(level_texture, width, height, ds, tile, margin),
                shape=(height // ds, width // ds, 3),
                dtype=np.uint8,
                photometric="rgb",
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": quality},
                description=description
                if level == 0
                else f"{width}x{height} -> {width // ds}x{height // ds}",
                metadata=None,
                software="mvh.aperio_writer",
            )
    return path
