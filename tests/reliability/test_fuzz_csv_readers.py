"""Fuzzing the other CSV readers users hand to mvh: labels (classify/retrieval) and the ST metadata CSV.

Every input ends in a table or a narrow mvh error (one line, exit 2), never another exception.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mvh.errors import MvhError
from mvh.tasks.st_data import read_meta_csv
from mvh.tasks.tile_labels import read_label_csv

FUZZ = settings(max_examples=60, deadline=None)
CELLS = st.one_of(
    st.text(max_size=10),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-5, max_value=10**6).map(str),
    st.sampled_from(["", "abc", "-1", "0", "nan", "inf", "1e400", "../x", "a\\b", "/abs", "s1:0:0:448"]),
)


def _write(folder: str, header: list[str], rows: list[list[str]], raw: bytes | None) -> Path:
    path = Path(folder) / "table.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        lines = [",".join(header)] + [",".join(f'"{c}"'.replace("\n", " ") for c in row) for row in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(["tile_id", "path", "label", "group", "patient", "split", "slide_id", "x"]),
        min_size=0,
        max_size=5,
        unique=True,
    ),
    rows=st.lists(st.lists(CELLS, min_size=0, max_size=6), max_size=5),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_label_csv_reader_gives_a_table_or_an_mvh_error(header, rows, raw) -> None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            table = read_label_csv(_write(folder, header, rows, raw))
        except MvhError:
            return
        assert "label" in table.columns and len(table) > 0


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(
            ["sample_id", "id", "patient", "study", "dataset_title", "mpp", "pixel_size_um_estimated"]
        ),
        min_size=0,
        max_size=5,
        unique=True,
    ),
    rows=st.lists(st.lists(CELLS, min_size=0, max_size=6), max_size=5),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_st_meta_csv_reader_gives_a_table_or_an_mvh_error(header, rows, raw) -> None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            read_meta_csv(_write(folder, header, rows, raw))
        except MvhError:
            return
