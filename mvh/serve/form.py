"""multipart/form-data request bodies, read and split into fields and files in memory (python-multipart).

Starlette's form parser writes a file part chunk by chunk into a SpooledTemporaryFile, whose BytesIO grows
by an eighth at a time: a 2 MB upload cost ~100 reallocations that each copied the buffer, about a third of
the server's CPU per image search on 2 cores (profiled). Here the body is read as chunks joined once (the
upload cap checked as they arrive) and python-multipart's parser cuts it into parts.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from mvh.errors import UsageError
from mvh.serve.uploads import UploadTooLarge


class FormError(UsageError):
    """A multipart body that cannot be read as a form (HTTP 400)."""


@dataclass(frozen=True)
class FormFile:
    """A file part: the name the client gave it and its bytes."""

    filename: str
    data: bytes


@dataclass
class Form:
    """The fields (text) and files of a multipart body, by part name."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, FormFile] = field(default_factory=dict)


async def read_body(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The whole body from its chunks, joined once; UploadTooLarge as soon as it passes `max_bytes`."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise UploadTooLarge(
                f"request body over the upload cap ({max_bytes / 2**20:.2f} MB with the form's other "
                "fields): send a tile"
            )
        parts.append(chunk)
    return b"".join(parts)


@dataclass
class _Part:
    """The part being parsed: its Content-Disposition and its data so far."""

    disposition: bytes = b""
    chunks: list[bytes] = field(default_factory=list)


def parse_form(body: bytes, content_type: str, *, max_fields: int, max_files: int) -> Form:
    """Split a multipart/form-data `body` (its Content-Type header names the boundary) into a Form."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise FormError("unreadable multipart body (no boundary in its Content-Type)")
    charset = _charset(params.get(b"charset"))
    form = Form()
    part = _Part()
    header_name, header_value = bytearray(), bytearray()

    def on_part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        if header_name.lower() == b"content-disposition":
            part.disposition = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part.chunks.append(bytes(data[start:end]))

    def on_part_end() -> None:
        _, options = parse_options_header(part.disposition)
        if b"name" not in options:
            raise FormError('unreadable multipart body (a part without Content-Disposition "name")')
        name = _text(options[b"name"], charset)
        if name in form.fields or name in form.files:
            raise FormError(f"unreadable multipart body (the part {name!r} is given twice)")
        data = b"".join(part.chunks)
        if b"filename" in options:
            if len(form.files) >= max_files:
                raise FormError(f"unreadable multipart body (more than {max_files} file(s))")
            form.files[name] = FormFile(_text(options[b"filename"], charset), data)
        else:
            if len(form.fields) >= max_fields:
                raise FormError(f"unreadable multipart body (more than {max_fields} fields)")
            form.fields[name] = _text(data, charset)

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })  # fmt: skip
    try:
        parser.write(body)
        parser.finalize()
    except ValueError as exc:  # python-multipart's parse errors derive from ValueError
        raise FormError(f"unreadable multipart body ({exc})") from exc
    return form


def _charset(value: bytes | None) -> str:
    """The body's declared charset, UTF-8 when none or an unknown one is declared."""
    try:
        return codecs.lookup((value or b"utf-8").decode("latin-1")).name
    except LookupError:
        return "utf-8"


def _text(value: bytes, charset: str) -> str:
    try:
        return value.decode(charset)
    except UnicodeDecodeError as exc:
        raise FormError(f"unreadable multipart body (a name or field is not {charset} text)") from exc
