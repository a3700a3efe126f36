"""Query image preparation: an image file read as RGB and brought to the store's tile (size and um/px).

With the query's um/px (`query_mpp`) the centre region covering `tile_px * store_mpp` um is cut and resized
to `tile_px`; without it, the centre square is resized to `tile_px` and a note says so.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mvh.errors import UsageError
from mvh.tasks.png_decode import decode_rgb


def load_image(path: Path) -> Image.Image:
    """An image file as a decoded RGB Pillow image (UsageError naming the file when unreadable)."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            return decode_rgb(image, data)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UsageError(f"cannot read query image {path}: {exc}; give a PNG/JPEG/TIFF tile") from exc


def _centre_crop(image: Image.Image, side: int) -> Image.Image:
    """The centre side x side square (the image itself when it is that square: no copy)."""
    w, h = image.size
    if (w, h) == (side, side):
        return image
    top = (h - side) // 2
    left = (w - side) // 2
    return image.crop((left, top, left + side, top + side))


def prepare_query_image(
    image: Image.Image, tile_px: int, mpp: float, query_mpp: float | None = None,
    mpp_field: str = "--query-mpp",
) -> tuple[np.ndarray, list[str]]:
    """Bring an RGB image to the store's tile (tile_px at mpp): the tile [tile_px, tile_px, 3] and notes
    (which name the query's um/px as `mpp_field`: the CLI option, or the web page's field).

    Cropping and resizing stay in Pillow: a 1000 px upload is never unpacked to an array and packed back.
    """
    w, h = image.size
    notes: list[str] = []
    if query_mpp is not None:
        if not query_mpp > 0:
            raise UsageError(f"{mpp_field} must be positive, got {query_mpp}")
        side = tile_px * mpp / query_mpp  # the store's physical tile, in query pixels
        if min(h, w) >= side:
            crop = max(1, int(round(side)))
            region = _centre_crop(image, crop)
            if (h, w) != (crop, crop):
                notes.append(
                    f"query image {w}x{h} px at {query_mpp:g} um/px: its centre {crop} px "
                    f"({tile_px * mpp:g} um) was used, resized to {tile_px} px at {mpp:g} um/px"
                )
        else:
            crop = min(h, w)
            region = _centre_crop(image, crop)
            notes.append(
                f"query image {w}x{h} px at {query_mpp:g} um/px covers less than a store tile "
                f"({tile_px * mpp:g} um): its centre square was upscaled to {tile_px} px"
            )
    else:
        crop = min(h, w)
        region = _centre_crop(image, crop)
        if (h, w) != (tile_px, tile_px):
            notes.append(
                f"query image {w}x{h} px has no {mpp_field}: its centre {crop} px square was resized to "
                f"{tile_px} px; give {mpp_field} to match the store's {mpp:g} um/px"
            )
    if region.size != (tile_px, tile_px):
        region = region.resize((tile_px, tile_px), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(region)), notes
