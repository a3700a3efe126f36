"""Uploaded query images: size cap, format check and a decompression-bomb limit, before the model."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from mvh.errors import UsageError
from mvh.tasks.png_decode import decode_rgb

FORMATS = {"PNG", "JPEG", "MPO", "TIFF"}


class UploadTooLarge(UsageError):
    """An upload over the size cap (HTTP 413)."""


class NotAnImage(UsageError):
    """An upload that is not a readable PNG/JPEG/TIFF image (HTTP 415)."""


def decode_upload(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """The decoded RGB image of an uploaded PNG/JPEG/TIFF (UploadTooLarge / NotAnImage otherwise)."""
    if len(data) > max_bytes:
        raise UploadTooLarge(
            f"the image is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:g} MB upload cap: "
            "send a tile, not a slide"
        )
    if not data:
        raise NotAnImage("the upload is empty: send a PNG, JPEG or TIFF tile")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in FORMATS:
                    raise NotAnImage(f"the upload is a {image.format} image: send a PNG, JPEG or TIFF tile")
                width, height = image.size
                if width * height > max_pixels:
                    raise UploadTooLarge(
                        f"the image is {width} x {height} px, over the {max_pixels:,} pixel limit: "
                        "send a tile, not a slide"
                    )
                return decode_rgb(image, data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadTooLarge(f"the image would decode to too many pixels ({exc}): send a tile") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImage("the upload is not an image Pillow recognises: send a PNG/JPEG/TIFF tile") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise NotAnImage(f"the upload is a damaged or truncated image ({exc}): send a tile") from exc

