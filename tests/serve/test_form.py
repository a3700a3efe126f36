"""multipart/form-data bodies split in memory: fields, files byte-exact, limits and malformed bodies."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from mvh.serve.form import FormError, parse_form, read_body
from mvh.serve.uploads import UploadTooLarge


def _encoded(data: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A body and Content-Type made by httpx's encoder (an independent implementation)."""
    request = httpx.Request("POST", "http://x/", data=data, files={k: (n, b) for k, (n, b) in files.items()})
    return request.read(), request.headers["content-type"]


def test_fields_and_a_binary_file_come_back_exactly() -> None:
    boundary_lookalikes = b"\r\n--\r\n-\r\n--" + b"\r\n" * 3
    payload = os.urandom(300_000) + boundary_lookalikes + os.urandom(70_000) + b"\r\n"
    fields = {"k": "7", "store": "caf\u00e9", "slide_level": ""}
    body, kind = _encoded(fields, {"image": ("tile 1.png", payload)})
    form = parse_form(body, kind, max_fields=8, max_files=1)
    assert form.fields == {"k": "7", "store": "caf\u00e9", "slide_level": ""}
    assert list(form.files) == ["image"]
    assert form.files["image"].filename == "tile 1.png"
    assert form.files["image"].data == payload


@pytest.mark.parametrize(
    ("data", "files", "words"),
    [
        ({f"f{i}": "1" for i in range(3)}, {"a": ("a.png", b"1")}, "more than 2 fields"),
        ({}, {"a": ("a.png", b"1"), "b": ("b.png", b"2")}, "more than 1 file"),
    ],
)
def test_limits_on_fields_and_files(data, files, words) -> None:
    body, kind = _encoded(data, files)
    with pytest.raises(FormError, match=words):
        parse_form(body, kind, max_fields=2, max_files=1)


def test_a_part_given_twice_is_refused_not_merged() -> None:
    body = (b"--b\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n1\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n2\r\n--b--\r\n")
    with pytest.raises(FormError, match="'k' is given twice"):
        parse_form(body, "multipart/form-data; boundary=b", max_fields=8, max_files=1)


@pytest.mark.parametrize(
    ("body", "kind", "words"),
    [
        (b"--b\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b",
         'without Content-Disposition "name"'),
        (b"anything", "multipart/form-data", "no boundary"),
        (b"--b\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n\xff\xfe\r\n--b--\r\n",
         "multipart/form-data; boundary=b", "not utf-8 text"),
        (b"--x\r\nnot a part", "multipart/form-data; boundary=x", "unreadable multipart body"),
    ],
)
def test_malformed_bodies_are_form_errors(body, kind, words) -> None:
    with pytest.raises(FormError, match=words):
        parse_form(body, kind, max_fields=8, max_files=1)


def _chunks(*parts: bytes):
    async def gen():
        for part in parts:
            yield part

    return gen()


def test_read_body_joins_chunks_and_stops_at_the_cap() -> None:
    assert asyncio.run(read_body(_chunks(b"ab", b"", b"cde"), 5)) == b"abcde"
    with pytest.raises(UploadTooLarge, match="upload cap"):
        asyncio.run(read_body(_chunks(b"ab", b"cd", b"ef"), 5))
