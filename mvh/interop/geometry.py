"""A slide's tile geometry from TRIDENT's coords attributes (or mvh's, or the flags that supply them),
and the coords attributes an export writes back.

Magnification converts to um/px as TRIDENT's patcher does (`WSIPatcher`: `pixel_size = 10 / mag`):
20x = 0.5 um/px, 40x = 0.25 um/px. Every attribute a file lacks and no flag supplies is asked for in one
message (UsageError naming the attributes and the flags); a bad value is a DataError naming the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mvh.errors import DataError, UsageError
from mvh.interop.trident import H5Slide

MAG_UM = 10.0  # TRIDENT: um/px = 10 / magnification
MAX_PX = 2**20  # larger tile sides are corrupt attributes (the store keeps tile_px as int32)


def mag_to_mpp(mag: float) -> float:
    """um/px of a magnification by TRIDENT's convention (10 / mag)."""
    return MAG_UM / mag


def mpp_to_mag(mpp: float) -> np.int64 | np.float64:
    """Magnification of an um/px by TRIDENT's convention, an integer when it is one (0.5 -> 20)."""
    mag = MAG_UM / mpp
    return np.int64(round(mag)) if abs(mag - round(mag)) < 1e-9 else np.float64(mag)


@dataclass(frozen=True)
class Geometry:
    """A slide's tile geometry: px and um/px as embedded, level-0 um/px and footprint, and their sources."""

    tile_px: int
    mpp: float
    slide_mpp: float | None
    size_l0: int
    overlap: float | None
    sources: dict[str, str]


def _number(attrs: dict[str, Any], key: str, path: Path, minimum_exclusive: bool = True) -> float | None:
    if key not in attrs:
        return None
    value = attrs[key]
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        if value == "None":  # TRIDENT's save_h5 writes None as the string "None"
            return None
        raise DataError(f"{path}: attribute `{key}` = {value!r} is not a number; fix the file")
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind not in "biuf":
        raise DataError(f"{path}: attribute `{key}` = {value!r} is not a number; fix the file")
    number = float(arr.reshape(()))
    if key in ("mpp", "slide_mpp") and math.isnan(number):
        return None  # mvh writes NaN for an unknown level-0 um/px
    low_ok = number > 0 if minimum_exclusive else number >= 0
    if not math.isfinite(number) or not low_ok:
        bound = "> 0" if minimum_exclusive else ">= 0"
        raise DataError(
            f"{path}: attribute `{key}` = {number:g} must be a finite number {bound}; fix the file"
        )
    return number


def _agree(path: Path, name: str, from_file: float | None, flag: str, from_flag: float | None) -> None:
    if (
        from_file is not None
        and from_flag is not None
        and not math.isclose(from_file, from_flag, rel_tol=1e-6)
    ):
        raise UsageError(
            f"{path}: the file says {name} = {from_file:g} but {flag} is {from_flag:g}; "
            f"drop {flag} (the file's value is used) or fix the file"
        )


def resolve_geometry(
    slide: H5Slide, tile_px: int | None, mpp: float | None, slide_mpp: float | None
) -> Geometry:
    """The slide's geometry from its attributes (mvh's, else TRIDENT's) or the flags that supply them.

    UsageError naming the missing attribute and the flag when neither has it; DataError for bad values.
    """
    path, ca = slide.path, slide.coords_attrs
    sources: dict[str, str] = {}
    missing: list[tuple[str, str]] = []  # (attribute, flag that supplies it): all asked for in one message
    patch = _number(ca, "patch_size", path)
    _agree(path, "patch_size", patch, "--tile-px", tile_px)
    if patch is None and tile_px is None:
        missing.append(("`patch_size`", "--tile-px (tile px of these features)"))
    px = patch if patch is not None else float(tile_px or 0)
    if px != int(px) or px > MAX_PX:
        raise DataError(f"{path}: patch_size = {px:g} is not a whole number of px <= {MAX_PX}; fix the file")
    sources["tile_px"] = "attribute patch_size" if patch is not None else "--tile-px"

    target_mag = _number(ca, "target_magnification", path)
    level0_mag = _number(ca, "level0_magnification", path)
    own_mpp = _number(ca, "mpp", path)
    file_mpp, mpp_from = own_mpp, "attribute mpp"
    if own_mpp is None and target_mag is not None:
        file_mpp, mpp_from = mag_to_mpp(target_mag), f"target_magnification {target_mag:g}x (10/mag)"
    _agree(path, "um/px", file_mpp, "--mpp", mpp)
    if file_mpp is None and mpp is None:
        missing.append(
            ("`target_magnification` (or mvh's `mpp`)", "--mpp (um/px the tiles were embedded at)")
        )
    sources["mpp"] = mpp_from if file_mpp is not None else "--mpp"
    tile_mpp = file_mpp if file_mpp is not None else float(mpp or 0)

    own_slide_mpp = _number(ca, "slide_mpp", path)
    level0_mpp, l0_from = own_slide_mpp, "attribute slide_mpp"
    if own_slide_mpp is None and level0_mag is not None:
        level0_mpp, l0_from = mag_to_mpp(level0_mag), f"level0_magnification {level0_mag:g}x (10/mag)"
    _agree(path, "level-0 um/px", level0_mpp, "--slide-mpp", slide_mpp)
    if level0_mpp is None and slide_mpp is not None:
        level0_mpp, l0_from = slide_mpp, "--slide-mpp"
    if level0_mpp is not None:
        sources["slide_mpp"] = l0_from

    size = _number(ca, "patch_size_level0", path)
    if size is None and level0_mpp is None and (level0_mag is None or target_mag is None):
        missing.append(
            ("`patch_size_level0` (or `level0_magnification`)", "--slide-mpp (level-0 um/px of the slides)")
        )
    if missing:
        raise UsageError(
            f"{path}: attribute{'s' if len(missing) > 1 else ''} {' and '.join(a for a, _ in missing)} "
            f"{'are' if len(missing) > 1 else 'is'} missing; pass {' and '.join(f for _, f in missing)}"
        )
    if size is not None:
        sources["size_l0"] = "attribute patch_size_level0"
    elif level0_mag is not None and target_mag is not None:
        size = float(px * level0_mag // target_mag)  # TRIDENT's coords_to_h5 formula
        sources["size_l0"] = "patch_size * level0_magnification // target_magnification"
    else:
        size = float(round(px * tile_mpp / level0_mpp))  # type: ignore[operator]
        sources["size_l0"] = "round(tile_px * mpp / slide_mpp)"
    if size != int(size) or not 0 < size <= MAX_PX:
        raise DataError(
            f"{path}: patch_size_level0 = {size:g} is not a whole number of px in (0, {MAX_PX}]; fix the file"
        )
    overlap = _number(ca, "overlap", path, minimum_exclusive=False)
    return Geometry(int(px), float(tile_mpp), level0_mpp, int(size), overlap, sources)


def trident_coords_attrs(
    slide_id: str, geometry: Geometry, width: int | None, height: int | None, savetodir: str
) -> dict[str, Any]:
    """The coords attributes TRIDENT's coords_to_h5 writes (plus mvh's `mpp`, `slide_mpp`).

    Without a level-0 um/px, `level0_magnification` and `slide_mpp` cannot be written and are left out;
    so are `level0_width`/`level0_height` when the slide's size is unknown.
    """
    attrs: dict[str, Any] = {
        "patch_size": np.int64(geometry.tile_px),
        "patch_size_level0": np.int64(geometry.size_l0),
        "target_magnification": mpp_to_mag(geometry.mpp),
        "overlap": np.int64(0 if geometry.overlap is None else geometry.overlap),
        "name": slide_id,
        "savetodir": savetodir,
        "mpp": np.float64(geometry.mpp),
    }
    # An unknown level-0 size is left out, not written as TRIDENT's string "None".
    if width is not None:
        attrs["level0_width"] = np.int64(width)
    if height is not None:
        attrs["level0_height"] = np.int64(height)
    if geometry.slide_mpp is not None:
        attrs["level0_magnification"] = mpp_to_mag(geometry.slide_mpp)
        attrs["slide_mpp"] = np.float64(geometry.slide_mpp)
    return attrs
