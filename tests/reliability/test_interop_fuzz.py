"""Fuzzing the h5 importer: random bytes, truncations, wrong dtypes and shapes, odd attributes.

Every input ends in an import result (the file recorded as failed, or imported) or a narrow mvh error,
never another exception.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvh.errors import MvhError
from mvh.interop import ExportConfig, ImportConfig, run_export, run_import
from tests.interop.test_peers import trident_slide

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLAGS = {"tile_px": None, "mpp": None, "slide_mpp": None}


def _import_once(folder: Path, **flags) -> None:
    """Run the importer on `folder`; only a result or an MvhError may come out."""
    try:
        result = run_import(ImportConfig(folder, str(folder.parent / "s.lance"), "uni_v1", **flags))
    except MvhError as exc:
        assert "\n" not in " ".join(str(exc).split())
        return
    for failed in result.failed:
        assert failed.error and failed.file.endswith(".h5")
    assert len(result.imported) + len(result.failed) == result.n_files


def _good_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return trident_slide(Path(tmp) / "job", "s", 5).read_bytes()


GOOD = _good_bytes()


@FUZZ
@given(st.binary(min_size=0, max_size=4096))
def test_random_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "h5"
        folder.mkdir()
        (folder / "x.h5").write_bytes(data)
        _import_once(folder, tile_px=224, mpp=0.5, slide_mpp=0.25)


@FUZZ
@given(st.integers(min_value=0, max_value=len(GOOD) - 1), st.binary(min_size=0, max_size=64))
def test_truncated_or_patched_trident_file(cut: int, patch: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "h5"
        folder.mkdir()
        damaged = bytearray(GOOD[:cut] if not patch else GOOD)
        if patch:
            damaged[cut : cut + len(patch)] = patch
        (folder / "s.h5").write_bytes(bytes(damaged))
        _import_once(folder)


DTYPES = st.sampled_from(["f4", "f2", "f8", "i8", "u1", "S3", "c8", "b1", "O"])
SHAPES = st.lists(st.integers(min_value=0, max_value=4), min_size=0, max_size=3).map(tuple)
ATTR_VALUES = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8).filter(lambda s: "\x00" not in s),
    st.lists(st.integers(min_value=-5, max_value=5), min_size=1, max_size=3),
)
ATTR_KEYS = st.sampled_from(
    [
        "patch_size",
        "patch_size_level0",
        "level0_magnification",
        "target_magnification",
        "overlap",
        "name",
        "mpp",
        "slide_mpp",
        "level0_width",
    ]
)


def _array(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype == "O":
        return np.array(["t"] * int(np.prod(shape)), dtype=object).reshape(shape)
    if dtype == "S3":
        return np.full(shape, b"abc", dtype="S3")
    return (rng.normal(size=shape) * 100).astype(dtype)


@FUZZ
@given(DTYPES, SHAPES, DTYPES, SHAPES, st.dictionaries(ATTR_KEYS, ATTR_VALUES, max_size=5))
def test_wrong_dtypes_shapes_and_attributes(fdtype, fshape, cdtype, cshape, attrs) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "h5"
        folder.mkdir()
        with h5py.File(folder / "s.h5", "w") as f:
            for key, dtype, shape in (("features", fdtype, fshape), ("coords", cdtype, cshape)):
                data = _array(dtype, shape, rng)
                if dtype == "O":
                    f.create_dataset(key, data=data, dtype=h5py.string_dtype())
                else:
                    f[key] = data
            for key, value in attrs.items():
                f["coords"].attrs[key] = value
        _import_once(folder, tile_px=224, mpp=0.5, slide_mpp=0.25)
        _import_once(folder)


@FUZZ
@given(st.dictionaries(ATTR_KEYS, ATTR_VALUES, min_size=1, max_size=6), st.booleans())
def test_valid_arrays_with_random_geometry_attributes(attrs, with_flags) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "h5"
        folder.mkdir()
        (folder / "s.h5").write_bytes(GOOD)
        with h5py.File(folder / "s.h5", "a") as f:
            for key, value in attrs.items():
                f["coords"].attrs[key] = value
        flags = {"tile_px": 256, "mpp": 0.5, "slide_mpp": 0.25} if with_flags else {}
        _import_once(folder, **flags)
        if (folder.parent / "s.lance").exists():
            try:
                run_export(ExportConfig(str(folder.parent / "s.lance"), folder.parent / "out"))
            except MvhError as exc:  # a narrow error is fine; anything else fails the test
                assert str(exc)
