"""One small `Slide` interface over OpenSlide (svs, ndpi, mrxs, scn, generic tiled TIFF, DICOM...) and
plain images (png, jpg, tif tiles) read as single-level slides.

The level-0 resolution (um/px) comes from the metadata: `openslide.mpp-x/y`, else Aperio's `MPP`, else
the TIFF resolution tags (inch or centimetre). A slide without any is refused with `MissingMppError`
(never guessed); a user-given `mpp` overrides the metadata and is recorded as `mpp_source == "user"`.
Pixels come back as RGB uint8, transparent areas composited on white. Aperio SVS and generic tiled TIFF
files with JPEG tiles are read directly (`mvh.extractor.jpeg_tiles`: the same pixels, several times
faster) wherever a request falls on whole pixels of the level; OpenSlide reads everything else.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import openslide
import tifffile
from PIL import Image, UnidentifiedImageError

from mvh.errors import MissingMppError, MvhError, SlideError
from mvh.extractor.jpeg_tiles import JpegPyramid

log = logging.getLogger(__name__)

MppSource = Literal["metadata", "user"]

# A resolution tag outside this range is a screen/print default (72, 96, 300 dpi), not a scan.
_PLAUSIBLE_MPP = (0.01, 50.0)
_BAND_PIXELS = 1 << 24  # level pixels decoded per read when downsampling a whole slide
_UM_PER_UNIT = {"inch": 25_400.0, "centimeter": 10_000.0, "millimeter": 1_000.0}
_DIRECT_VENDORS = ("aperio", "generic-tiff")  # TIFF layouts whose tiled pages are OpenSlide's levels


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite straight-alpha RGBA uint8 [..., 4] on white: uint8 [..., 3]."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return rgb.copy()
    a = alpha.astype(np.float32) / 255.0
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image as RGB uint8 [h, w, 3], transparency composited on white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return rgba_to_rgb(np.asarray(image.convert("RGBA")))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _plausible(mpp: float) -> bool:
    return math.isfinite(mpp) and _PLAUSIBLE_MPP[0] < mpp < _PLAUSIBLE_MPP[1]


def _mpp_from_resolution(xres: float, yres: float, unit: str) -> tuple[float, float] | None:
    """um/px from TIFF X/YResolution (pixels per `unit`), or None when the unit is not physical."""
    per_unit = _UM_PER_UNIT.get(unit.lower())
    if per_unit is None or not (xres > 0 and yres > 0):
        return None
    mpp = (per_unit / xres, per_unit / yres)
    return mpp if all(_plausible(m) for m in mpp) else None


def _mpp_from_properties(props: Mapping[str, str]) -> tuple[float, float] | None:
    """um/px (x, y) from OpenSlide properties, or None."""
    try:
        if "openslide.mpp-x" in props and "openslide.mpp-y" in props:
            mpp = (float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"]))
            if all(_plausible(m) for m in mpp):
                return mpp
        if "aperio.MPP" in props:
            m = float(props["aperio.MPP"])
            if _plausible(m):
                return (m, m)
        if {"tiff.XResolution", "tiff.YResolution", "tiff.ResolutionUnit"} <= props.keys():
            return _mpp_from_resolution(
                float(props["tiff.XResolution"]),
                float(props["tiff.YResolution"]),
                props["tiff.ResolutionUnit"],
            )
    except ValueError:
        return None
    return None


def _mpp_from_pil(image: Image.Image) -> tuple[float, float] | None:
    """um/px from a TIFF's resolution tags; PNG/JPEG dpi are display hints and are not used."""
    if image.format != "TIFF":
        return None
    tags = image.tag_v2
    if 282 not in tags or 283 not in tags:
        return None
    unit = {2: "inch", 3: "centimeter"}.get(int(tags.get(296, 2)), "none")
    return _mpp_from_resolution(float(tags[282]), float(tags[283]), unit)


class Slide:
    """A whole-slide image or a plain image, with its level-0 um/px; read pixels as RGB uint8.

    `direct=False` reads every pixel through OpenSlide (the reference the direct reader is tested against).
    """

    def __init__(self, path: Path, mpp: float | None = None, direct: bool = True) -> None:
        self.path = Path(path)
        self._direct = direct
        self._jpeg: JpegPyramid | None = None
        self.slide_id = self.path.stem
        if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
            raise SlideError(f"{self.path}: --slide-mpp must be a positive number of um/px, got {mpp}")
        self._osr: openslide.OpenSlide | None = None
        self._image: np.ndarray | None = None
        self._associated: dict[str, np.ndarray] | None = None
        self._open()
        self.level_count = len(self.level_dimensions)
        self.dimensions = self.level_dimensions[0]
        if mpp is not None:
            self.mpp_x = self.mpp_y = float(mpp)
            self.mpp_source: MppSource = "user"
        elif self._metadata_mpp is not None:
            self.mpp_x, self.mpp_y = self._metadata_mpp
            self.mpp_source = "metadata"
        else:
            self.close()
            raise MissingMppError(
                f"{self.path}: no um/px (mpp) in its metadata; pass its scan resolution, e.g. --slide-mpp 0.5"
            )
        if abs(self.mpp_x - self.mpp_y) > 0.01 * self.mpp_x:
            log.warning(
                "%s: anisotropic pixels (%.4f x %.4f um/px); using their mean",
                self.path,
                self.mpp_x,
                self.mpp_y,
            )
        self.mpp = (self.mpp_x + self.mpp_y) / 2.0

    def _open(self) -> None:
        """Open with OpenSlide when it knows the format, else as a plain single-level image."""
        if not self.path.exists():
            raise SlideError(f"{self.path}: no such file; check the path")
        try:
            vendor = openslide.OpenSlide.detect_format(str(self.path))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.path}: cannot be opened ({_reason(exc)}); is it a slide file?") from exc
        if vendor is not None:
            try:
                self._osr = openslide.OpenSlide(str(self.path))
            except openslide.OpenSlideError as exc:
                raise SlideError(
                    f"{self.path}: cannot be opened as a {vendor} slide ({_reason(exc)}); the file may be "
                    "corrupt or truncated"
                ) from exc
            props = self._osr.properties
            self._metadata_mpp = _mpp_from_properties(props)
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(self._osr.level_dimensions)
            self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._osr.level_downsamples)
            if self._direct and vendor in _DIRECT_VENDORS:
                self._jpeg = JpegPyramid.open(self.path, self.level_dimensions)
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PIL's EXIF/decompression notes are not the user's concern
                with Image.open(self.path) as image:
                    self._metadata_mpp = _mpp_from_pil(image)
                    self._image = pil_to_rgb(image)
        except Image.DecompressionBombError as exc:
            raise SlideError(
                f"{self.path}: too large to read as a plain image ({_reason(exc)}); convert it to a "
                "pyramidal tiled TIFF (e.g. `vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg`)"
            ) from exc
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            if self.path.suffix.lower() not in (".tif", ".tiff") or not self._open_with_tifffile():
                raise SlideError(
                    f"{self.path}: cannot be opened ({_reason(exc)}); not a format OpenSlide reads nor a "
                    "readable image, or the file is corrupt"
                ) from exc
        h, w = self._image.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)

    def _open_with_tifffile(self) -> bool:
        """Read a TIFF that Pillow cannot decode (codec, BigTIFF) with tifffile; False if it cannot either."""
        try:
            with tifffile.TiffFile(self.path) as tif:
                page = tif.pages.first
                array = page.asarray()
                tags = {t.code: t.value for t in page.tags.values()}
        except (tifffile.TiffFileError, OSError, ValueError, RuntimeError, IndexError):
            return False  # IndexError: a TIFF header without pages
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            return False
        if array.dtype != np.uint8:
            top = float(np.iinfo(array.dtype).max) if array.dtype.kind in "ui" else float(array.max() or 1)
            array = (array.astype(np.float64) / top * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        self._image = rgba_to_rgb(array) if array.shape[2] == 4 else np.ascontiguousarray(array)
        self._metadata_mpp = None
        if 282 in tags and 283 in tags:
            unit = {2: "inch", 3: "centimeter"}.get(int(tags.get(296, 2)), "none")
            xres, yres = (float(v[0]) / float(v[1]) for v in (tags[282], tags[283]))
            self._metadata_mpp = _mpp_from_resolution(xres, yres, unit)
        return True

    @property
    def properties(self) -> Mapping[str, str]:
        """The raw metadata (OpenSlide properties; empty for plain images)."""
        return dict(self._osr.properties) if self._osr is not None else {}

    @property
    def associated_images(self) -> dict[str, np.ndarray]:
        """Label, macro, thumbnail... as RGB uint8 arrays by name (empty for plain images)."""
        if self._associated is None:
            if self._osr is None:
                self._associated = {}
            else:
                self._associated = {k: pil_to_rgb(v) for k, v in self._osr.associated_images.items()}
        return self._associated

    def level_mpp(self, level: int) -> float:
        """um/px at a pyramid level."""
        return self.mpp * self.level_downsamples[level]

    def best_level_for_downsample(self, downsample: float) -> int:
        """The level with the largest downsample that is <= `downsample` (0 when none is)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6) and ds >= self.level_downsamples[best]:
                best = level
        return best

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 [h, w, 3] of `size` (w, h) at `level` from level-0 top-left `location`; white outside."""
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        if self._jpeg is not None and 0 <= level < self.level_count:
            # OpenSlide maps level-0 coordinates to the level by dividing by its downsample and
            # interpolates fractional positions; only whole level pixels are read directly.
            lx, ly = x / self.level_downsamples[level], y / self.level_downsamples[level]
            if lx == int(lx) and ly == int(ly):
                return self._jpeg.read(level, int(lx), int(ly), w, h)
        if self._osr is not None:
            try:
                region = self._osr.read_region((x, y), level, (w, h))
            except openslide.OpenSlideError as exc:
                raise SlideError(
                    f"{self.path}: cannot read pixels ({_reason(exc)}); the file may be corrupt"
                ) from exc
            return rgba_to_rgb(np.asarray(region))
        if level != 0:
            raise ValueError(f"{self.path} has one level; level {level} does not exist")
        assert self._image is not None
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        H, W = self._image.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._image[y0:y1, x0:x1]
        return out

    def read_level(self, level: int) -> np.ndarray:
        """A whole pyramid level as RGB uint8 [h, w, 3]."""
        return self.read_region((0, 0), level, self.level_dimensions[level])

    def read_downsampled(self, downsample: float) -> tuple[np.ndarray, float]:
        """The whole slide block-averaged by an integer factor of the best level: (RGB uint8, its downsample).

        The factor is the one closest to `downsample`; bands of rows are decoded one at a time, so a slide
        without a pyramid never has to fit in memory at full resolution.
        """
        level = self.best_level_for_downsample(downsample)
        level_ds = self.level_downsamples[level]
        k = max(1, round(downsample / level_ds))
        lw, lh = self.level_dimensions[level]
        out_w, out_h = math.ceil(lw / k), math.ceil(lh / k)
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        band_rows = max(1, _BAND_PIXELS // (out_w * k * k))
        for r0 in range(0, out_h, band_rows):
            rows = min(band_rows, out_h - r0)
            band = self.read_region((0, round(r0 * k * level_ds)), level, (out_w * k, rows * k))
            if k == 1:
                out[r0 : r0 + rows] = band
            else:
                # Pillow's reduce is the same k x k box mean in C, several times faster than numpy here
                out[r0 : r0 + rows] = np.asarray(Image.fromarray(band).reduce(k))
        return out, k * level_ds

    def thumbnail(self, max_size: int | tuple[int, int] = 1024) -> np.ndarray:
        """RGB uint8 [h, w, 3] of the whole slide, aspect kept, fitting in `max_size` px."""
        box = (max_size, max_size) if isinstance(max_size, int) else max_size
        W, H = self.dimensions
        scale = min(box[0] / W, box[1] / H, 1.0)
        size = (max(1, round(W * scale)), max(1, round(H * scale)))
        rgb, _ = self.read_downsampled(max(1.0, math.floor(1.0 / scale)))
        image = Image.fromarray(rgb)
        return np.array(image.resize(size, Image.Resampling.BOX) if image.size != size else image)

    def close(self) -> None:
        """Release the file handles."""
        if self._jpeg is not None:
            self._jpeg.close()
            self._jpeg = None
        if self._osr is not None:
            self._osr.close()
            self._osr = None
        self._image = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide({str(self.path)!r}, {self.dimensions[0]}x{self.dimensions[1]}, "
            f"levels={self.level_count}, mpp={self.mpp:.4g} ({self.mpp_source}))"
        )


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def open_slide(path: str | Path, mpp: float | None = None, direct: bool = True) -> Slide:
    """Open a slide or plain image; `mpp` (um/px) overrides the metadata. SlideError / MissingMppError."""
    path = Path(path)
    try:
        return Slide(path, mpp=mpp, direct=direct)
    except MvhError:
        raise
    except Exception as exc:  # noqa: BLE001 (decoders raise anything on corrupt files: tifffile IndexError)
        raise SlideError(
            f"{path}: cannot be opened ({type(exc).__name__}: {_reason(exc)}); the file is corrupt or "
            "truncated, or not a slide"
        ) from exc
