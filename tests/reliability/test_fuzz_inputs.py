"""Fuzzing the slide opener and the slides-CSV reader: every input gives a result or a narrow mvh error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.errors import MvhError
from mvh.extractor.slide import open_slide
from mvh.extractor.slide_inputs import find_slides

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def valid_tiff(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "ok.tiff"
    write_synthetic_slide(path, 512, 384, 0.5, tissue_rects=[(0, 0, 256, 256)], levels=2, seed=4)
    return path.read_bytes()


def _open(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz{suffix}"
        path.write_bytes(data)
        try:
            with open_slide(path, mpp=0.5) as slide:
                slide.read_region((0, 0), 0, (16, 16))
                slide.thumbnail(32)
        except MvhError:
            pass


@FUZZ
@example(data=b"II*\0" + bytes(64), suffix=".tif")  # a TIFF header without pages: tifffile's IndexError
@example(data=b"II+\0\x08\0\0\0" + bytes(64), suffix=".tiff")
@given(
    data=st.binary(max_size=4096), suffix=st.sampled_from([".tif", ".tiff", ".svs", ".png", ".jpg", ".ndpi"])
)
def test_random_bytes_open_or_raise_a_slide_error(data: bytes, suffix: str) -> None:
    _open(data, suffix)


@FUZZ
@given(
    cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8)
)
def test_truncated_and_bit_flipped_tiffs_open_or_raise_a_slide_error(valid_tiff, cut, flips) -> None:
    data = bytearray(valid_tiff[: int(len(valid_tiff) * cut)])
    for where, value in flips:
        if data:
            data[int(where * (len(data) - 1))] = value
    _open(bytes(data), ".tif")


CELLS = st.one_of(
    st.text(max_size=12),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers().map(str),
    st.sampled_from(["", "abc", "-1", "0", "nan", "inf", "1e400", "../x.svs", "a\\b.svs", "/abs/x.svs"]),
)


@FUZZ
@given(
    header=st.sampled_from(["path,mpp", "path", "mpp", "file,mpp", ""]),
    rows=st.lists(st.tuples(CELLS, CELLS), max_size=5),
    raw=st.one_of(st.none(), st.binary(max_size=256)),
)
def test_slides_csv_reader_returns_slides_or_a_data_error(header, rows, raw) -> None:
    with tempfile.TemporaryDirectory() as folder:
        csv = Path(folder) / "slides.csv"
        if raw is not None:
            csv.write_bytes(raw)
        else:
            lines = [header] + [",".join(f'"{c}"'.replace("\n", " ") for c in row) for row in rows]
            csv.write_text("\n".join(lines) + "\n")
        try:
            found = find_slides(slides_csv=csv)
        except MvhError:
            return
        assert all(s.mpp is None or s.mpp > 0 for s in found)
