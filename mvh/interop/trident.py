"""TRIDENT's per-slide h5 files: their attributes, reading and writing (their geometry: `geometry`).

TRIDENT (mahmoodlab/TRIDENT: `trident/IO.py` `coords_to_h5` and `save_h5`, `trident/wsi_objects/WSI.py`
`extract_patch_features`) writes one `<name>.h5` per slide:
- `features` float [N, D] (shape (0,) for a slide without tissue), attributes `name`, `savetodir`,
  `encoder`;
- `coords` int64 [N, 2] (level-0 top-left x, y), attributes `patch_size` (px at the target
  magnification), `patch_size_level0` (= patch_size * level0_magnification // target_magnification),
  `level0_magnification`, `target_magnification`, `overlap` (px at the target magnification), `name`,
  `savetodir`, `level0_width`, `level0_height` (a None is written as the string "None").

CLAM's feature files (`features`, `coords` int32, no attributes)
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

from mvh.errors import DataError

H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError)


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
