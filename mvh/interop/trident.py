"""TRIDENT's per-slide h5 files: their attributes, the magnification -> um/px rule, reading and writing.

TRIDENT (mahmoodlab/TRIDENT: `trident/IO.py` `coords_to_h5` and `save_h5`, `trident/wsi_objects/WSI.py`
`extract_patch_features`) writes one `<name>.h5` per slide:
- `features` float [N, D] (shape (0,) for a slide without tissue), attributes `name`, `savetodir`,
  `encoder`;
- `coords` int64 [N, 2] (level-0 top-left x, y), attributes `patch_size` (px at the target
  magnification), `patch_size_level0` (= patch_size * level0_magnification // target_magnification),
  `level0_magnification`, `target_magnification`, `overlap` (px at the target magnification), `name`,
  `savetodir`, `level0_width`, `level0_height` (a None is written as the string "None").

Magnification converts to um/px as TRIDENT's patcher does (`WSIPatcher`: `pixel_size = 10 / mag`):
20x = 0.5 um/px, 40x = 0.25 um/px. CLAM's feature files (`features`, `coords` int32, no attributes)
are the same layout without the attributes. mvh adds `mpp` and `slide_mpp` to the coords attributes,
`tile_ids` and `tissue_fraction` datasets, and file attributes naming the store's fingerprint.
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mvh.errors import DataError, UsageError

MAG_UM = 10.0  # TRIDENT: um/px = 10 / magnification
MAX_PX = 2**20  # larger tile sides are corrupt attributes (the store keeps tile_px as int32)
H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError)


def mag_to_mpp(mag: float) -> float:
    """um/px of a magnification by TRIDENT's convention (10 / mag)."""
    return MAG_UM / mag


def mpp_to_mag(mpp: float) -> np.int64 | np.float64:
    """Magnification of an um/px by TRIDENT's convention, an integer when it is one (0.5 -> 20)."""
    mag = MAG_UM / mpp
    return np.int64(round(mag)) if abs(mag - round(mag)) < 1e-9 else np.float64(mag)


# ---------------------------------------------------------------- attribute codec (JSON <-> h5)
def encode_attrs(attrs: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """h5 attributes as JSON-ready `{key: {type, shape, value}}`; also the keys of unsupported types."""
    out: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for key, value in attrs.items():
        if isinstance(value, str):
            out[key] = {"type": "str", "value": value}
        elif isinstance(value, (bytes, np.bytes_)):
            out[key] = {"type": "bytes", "value": bytes(value).decode("latin-1")}
        elif isinstance(value, (np.generic, np.ndarray)) and np.asarray(value).dtype.kind in "biuf":
            arr = np.asarray(value)
            out[key] = {"type": arr.dtype.str, "shape": list(arr.shape), "value": _json_values(arr)}
        else:
            skipped.append(str(key))
    return out, skipped


def _json_values(arr: np.ndarray) -> list[Any]:
    """Flat values of `arr` for strict JSON: non-finite floats as the strings "nan", "inf", "-inf"."""
    flat = arr.reshape(-1)
    if arr.dtype.kind != "f":
        return flat.tolist()
    return [v if math.isfinite(v) else str(v) for v in flat.astype(np.float64).tolist()]


def decode_attrs(encoded: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Inverse of `encode_attrs`: values h5py writes back with their original type."""
    out: dict[str, Any] = {}
    for key, item in encoded.items():
        if item["type"] == "str":
            out[key] = item["value"]
        elif item["type"] == "bytes":
            out[key] = np.bytes_(item["value"].encode("latin-1"))
        else:
            values = [float(v) if isinstance(v, str) else v for v in item["value"]]
            arr = np.asarray(values, dtype=np.dtype(item["type"])).reshape(item["shape"])
            out[key] = arr[()] if arr.ndim == 0 else arr
    return out


# ---------------------------------------------------------------- reading
@dataclass
class H5Slide:
    """One per-slide h5 file as read: arrays in file order, attributes as h5py returns them."""

    path: Path
    name: object
    features: np.ndarray
    coords: np.ndarray
    coords_attrs: dict[str, Any]
    features_attrs: dict[str, Any]
    file_attrs: dict[str, Any]
    dtypes: dict[str, str]
    features_shape: tuple[int, ...]
    tile_ids: list[str] | None = None
    tissue_fraction: np.ndarray | None = None
    dim: int | None = None
    n_tiles: int = 0

    @property
    def empty(self) -> bool:
        """True for a slide without tiles (TRIDENT writes `features` of shape (0,) for those)."""
        return self.n_tiles == 0


def _dataset(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        raise DataError(
            f"{path}: no `{key}` dataset; expected a TRIDENT/CLAM feature file (`features`, `coords`)"
        )
    return obj


# Reads every attribute, dtype and shape of each file named on the command line, printing a line per file.
_PROBE = """
import sys, h5py
def visit(name, obj):
    dict(obj.attrs)
    if isinstance(obj, h5py.Dataset):
        obj.dtype, obj.shape
for path in sys.argv[1:]:
    try:
        with h5py.File(path, "r") as f:
            dict(f.attrs)
            f.visititems(visit)
    except Exception:
        pass
    sys.stdout.write("ok\\n")
    sys.stdout.flush()
"""


def files_that_crash_hdf5(paths: Sequence[Path]) -> dict[Path, str]:
    """Files whose headers crash the HDF5 library itself (a corrupt file can segfault it), found in a child
    process so that one bad file fails alone instead of killing the whole import."""
    crashed: dict[Path, str] = {}
    start = 0
    while start < len(paths):
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, *map(str, paths[start:])], capture_output=True, text=True
        )
        if done.returncode >= 0:
            return crashed
        k = start + done.stdout.count("ok")
        crashed[paths[k]] = (
            f"{paths[k]}: reading its header crashed the HDF5 library (signal {-done.returncode}): the file "
            "is corrupt; export it again from its source"
        )
        start = k + 1
    return crashed


def read_h5_header(path: Path) -> H5Slide:
    """A file's attributes, dtypes and shapes, not its arrays (DataError naming the file if unreadable)."""
    try:
        with h5py.File(path, "r") as f:
            feats, coords = _dataset(f, "features", path), _dataset(f, "coords", path)
            slide = H5Slide(
                path=path,
                name=None,
                features=np.empty((0, 0), np.float32),
                coords=np.empty((0, 2), np.int64),
                coords_attrs=dict(coords.attrs),
                features_attrs=dict(feats.attrs),
                file_attrs=dict(f.attrs),
                dtypes={"features": feats.dtype.str, "coords": coords.dtype.str},
                features_shape=tuple(int(n) for n in feats.shape),
            )
            coords_shape = tuple(int(n) for n in coords.shape)
    except DataError:
        raise
    except H5_ERRORS as exc:
        raise DataError(
            f"{path}: not a readable h5 file ({_short(exc)}); check or re-create the file"
        ) from exc
    _check_shapes(slide, coords_shape)
    slide.name = slide.coords_attrs.get("name")
    if isinstance(slide.name, (bytes, np.bytes_)):
        slide.name = bytes(slide.name).decode("utf-8", errors="replace")
    return slide


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _check_shapes(slide: H5Slide, coords_shape: tuple[int, ...]) -> None:
    path, fshape = slide.path, slide.features_shape
    fkind = np.dtype(slide.dtypes["features"]).kind
    ckind = np.dtype(slide.dtypes["coords"]).kind
    if fkind != "f":
        raise DataError(
            f"{path}: `features` has dtype {np.dtype(slide.dtypes['features'])}; expected float embeddings"
        )
    if ckind not in "iu":
        raise DataError(
            f"{path}: `coords` has dtype {np.dtype(slide.dtypes['coords'])}; expected integer level-0 x, y"
        )
    n_feats = 0 if len(fshape) == 0 else fshape[0]
    empty = math.prod(fshape) == 0 and n_feats == 0 and math.prod(coords_shape) == 0
    if empty and len(fshape) in (1, 2) and len(coords_shape) in (1, 2):
        slide.dim = fshape[1] if len(fshape) == 2 and fshape[1] > 0 else None
        slide.n_tiles = 0
        return
    if len(fshape) != 2 or fshape[1] < 1 or coords_shape != (fshape[0], 2):
        # TRIDENT's slide_features_<encoder>/ files hold one vector per slide: not tile embeddings.
        hint = "; one vector per slide is a slide embedding, not tiles" if len(fshape) == 1 else ""
        raise DataError(
            f"{path}: features {fshape} and coords {coords_shape} must be [N, dim] and [N, 2]{hint}"
        )
    slide.dim = fshape[1]
    slide.n_tiles = fshape[0]


def read_h5(path: Path) -> H5Slide:
    """A per-slide h5 file with its arrays (DataError naming the file for any defect)."""
    slide = read_h5_header(path)
    try:
        with h5py.File(path, "r") as f:
            if not slide.empty:
                slide.features = np.asarray(f["features"][()], dtype=np.float32)
                slide.coords = np.asarray(f["coords"][()], dtype=np.int64)
            elif slide.dim is not None:
                slide.features = np.empty((0, slide.dim), np.float32)
            slide.tile_ids = _strings(f, "tile_ids", len(slide.coords), path)
            tissue = f.get("tissue_fraction")
            if isinstance(tissue, h5py.Dataset):
                slide.tissue_fraction = np.asarray(tissue[()], dtype=np.float32)
    except DataError:
        raise
    except H5_ERRORS as exc:
        raise DataError(
            f"{path}: cannot read its arrays ({_short(exc)}); check or re-create the file"
        ) from exc
    if slide.tissue_fraction is not None and slide.tissue_fraction.shape != (len(slide.coords),):
        raise DataError(f"{path}: `tissue_fraction` {slide.tissue_fraction.shape} does not match the coords")
    if not np.isfinite(slide.features).all():
        raise DataError(f"{path}: `features` contain NaN or inf; re-create the file")
    return slide


def _strings(f: h5py.File, key: str, n: int, path: Path) -> list[str] | None:
    ds = f.get(key)
    if ds is None:
        return None
    if not isinstance(ds, h5py.Dataset) or ds.shape != (n,) or ds.dtype.kind not in "OSU":
        raise DataError(f"{path}: `{key}` must hold {n} strings, one per tile")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]


# ---------------------------------------------------------------- geometry
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


# ---------------------------------------------------------------- writing
def _write_dataset(f: h5py.File, key: str, data: np.ndarray, attrs: dict[str, Any]) -> None:
    # Resizable along N as TRIDENT's and CLAM's writers make them (both append with resize).
    chunks = (max(1, min(len(data), 1024)), *data.shape[1:]) if data.ndim else None
    ds = f.create_dataset(key, data=data, maxshape=(None, *data.shape[1:]), chunks=chunks)
    for name, value in attrs.items():
        ds.attrs[name] = value


def write_h5(
    path: Path,
    features: np.ndarray,
    coords: np.ndarray,
    coords_attrs: dict[str, Any],
    features_attrs: dict[str, Any],
    file_attrs: dict[str, Any],
    extras: dict[str, np.ndarray],
) -> None:
    """Write one per-slide h5 file: `features`, `coords` with their attributes, extra datasets.

    The file is built in memory and written with one plain write: HDF5 writing to a full disk itself
    fails in its object destructors and crashes the interpreter at exit, a plain write raises OSError.
    """
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        _write_dataset(f, "features", features, features_attrs)
        _write_dataset(f, "coords", coords, coords_attrs)
        for key, data in extras.items():
            if data.dtype == object:
                f.create_dataset(key, data=data, dtype=h5py.string_dtype())
            else:
                f.create_dataset(key, data=data)
        for name, value in file_attrs.items():
            f.attrs[name] = value
    path.write_bytes(image.getbuffer())
