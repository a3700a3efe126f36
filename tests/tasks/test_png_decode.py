"""Query-image decoding: the libdeflate path for plain PNGs gives exactly Pillow's RGB pixels."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from mvh.tasks.png_decode import _decode_plain_png, decode_rgb


def _pillow_rgb(data: bytes) -> np.ndarray:
    """The independent expectation: Pillow's own decode and convert("RGB")."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _ours(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(decode_rgb(image, data))


def _png(array: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG", **save)
    return buf.getvalue()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def _assemble(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks
    )
    return b"\x89PNG\r\n\x1a\n" + body


def _textured(h: int, w: int, channels: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise, so the encoder picks different row filters."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 3 + yy * c) % 256 for c in range(channels)], axis=-1)
    noise = rng.integers(0, 40, size=(h, w, channels))
    return ((base + noise * (yy[..., None] % 3 == 0)) % 256).astype(np.uint8)


def test_the_real_he_tile_takes_the_libdeflate_path_and_equals_pillow(he_tile: Path) -> None:
    data = he_tile.read_bytes()
    fast = _decode_plain_png(data)
    assert fast is not None and fast.mode == "RGB" and fast.size == (1000, 1000)
    np.testing.assert_array_equal(np.asarray(fast), _pillow_rgb(data))
    np.testing.assert_array_equal(_ours(data), _pillow_rgb(data))


@pytest.mark.parametrize(
    ("h", "w", "channels", "save"),
    [
        (37, 5, 3, {}),
        (1, 1, 3, {}),
        (300, 257, 3, {"compress_level": 1}),
        (300, 257, 3, {"optimize": True}),
        (64, 99, 4, {}),  # RGBA: alpha dropped as convert("RGB") drops it
    ],
)
def test_plain_pngs_take_the_fast_path_and_equal_pillow(h, w, channels, save) -> None:
    array = _textured(h, w, channels)
    data = _png(array, **save)
    assert _decode_plain_png(data) is not None
    np.testing.assert_array_equal(_ours(data), _pillow_rgb(data))
    np.testing.assert_array_equal(_ours(data), array[..., :3])


def test_every_row_filter_type_is_undone_as_pillow_does() -> None:
    array = _textured(40, 23, 3, seed=3)
    raw = b"".join(bytes([row % 5]) + _filtered(array, row, row % 5) for row in range(array.shape[0]))
    header = struct.pack(">IIBBBBB", 23, 40, 8, 2, 0, 0, 0)
    data = _assemble([(b"IHDR", header), (b"IDAT", zlib.compress(raw)), (b"IEND", b"")])
    np.testing.assert_array_equal(_pillow_rgb(data), array)  # the hand-made PNG is right
    np.testing.assert_array_equal(_ours(data), array)


def _filtered(array: np.ndarray, row: int, kind: int) -> bytes:
    """PNG filter `kind` applied to one row (bpp 3), written out from the PNG specification."""
    cur = array[row].reshape(-1).astype(np.int32)
    prev = array[row - 1].reshape(-1).astype(np.int32) if row else np.zeros_like(cur)
    out = []
    for i, x in enumerate(cur):
        a = cur[i - 3] if i >= 3 else 0
        b = prev[i]
        c = prev[i - 3] if i >= 3 else 0
        if kind == 0:
            pred = 0
        elif kind == 1:
            pred = a
        elif kind == 2:
            pred = b
        elif kind == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out.append((x - pred) % 256)
    return bytes(out)


def test_several_idat_chunks_and_ancillary_chunks_are_read() -> None:
    array = _textured(120, 80, 3, seed=1)
    chunks = _chunks(_png(array))
    stream = b"".join(d for t, d in chunks if t == b"IDAT")
    pieces = [stream[i : i + 997] for i in range(0, len(stream), 997)]
    rebuilt = (
        [chunks[0], (b"tEXt", b"Comment\x00a tile"), (b"tRNS", b"\x00\x01\x00\x02\x00\x03")]
        + [(b"IDAT", p) for p in pieces]
        + [(b"tEXt", b"After\x00idat"), (b"IEND", b"")]
    )
    data = _assemble(rebuilt)
    assert len(pieces) > 3 and _decode_plain_png(data) is not None
    np.testing.assert_array_equal(_ours(data), array)
    np.testing.assert_array_equal(_pillow_rgb(data), array)


def _palette() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_textured(30, 20, 3)).quantize(16).save(buf, format="PNG")
    return buf.getvalue()


def _apng() -> bytes:
    frames = [Image.fromarray(_textured(16, 16, 3, seed=s)) for s in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def test_idat_chunks_split_by_another_chunk_are_left_to_pillow() -> None:
    chunks = _chunks(_png(_textured(60, 40, 3, seed=4)))
    stream = b"".join(d for t, d in chunks if t == b"IDAT")
    half = len(stream) // 2
    parts = [chunks[0], (b"IDAT", stream[:half]), (b"tEXt", b"k\x00v"), (b"IDAT", stream[half:])]
    parts.append((b"IEND", b""))
    data = _assemble(parts)
    assert _decode_plain_png(data) is None
    try:
        expected = _pillow_rgb(data)
    except (OSError, ValueError):
        with pytest.raises((OSError, ValueError)):
            _ours(data)
    else:
        np.testing.assert_array_equal(_ours(data), expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _png(_textured(30, 20, 1)[..., 0]),  # grey
        _palette,
        lambda: imagecodecs.png_encode(_textured(30, 20, 3).astype(np.uint16) * 257),  # 16-bit RGB
        _apng,
    ],
    ids=["grey", "palette", "rgb16", "apng"],
)
def test_other_pngs_are_decoded_by_pillow(make) -> None:
    data = make()
    assert _decode_plain_png(data) is None
    np.testing.assert_array_equal(_ours(data), _pillow_rgb(data))


def test_damaged_streams_fail_or_decode_exactly_as_pillow() -> None:
    array = _textured(50, 40, 3, seed=2)
    chunks = _chunks(_png(array))
    stream = b"".join(d for t, d in chunks if t == b"IDAT")
    header = chunks[0][1]
    bigger = struct.pack(">II", 40, 49) + header[8:]  # one row fewer than the stream holds
    cases = {
        "truncated stream": [chunks[0], (b"IDAT", stream[: len(stream) // 2]), (b"IEND", b"")],
        "bad checksum": [chunks[0], (b"IDAT", stream[:-4] + b"\x00\x00\x00\x00"), (b"IEND", b"")],
        "more data than rows": [(b"IHDR", bigger), (b"IDAT", stream), (b"IEND", b"")],
        "bad filter byte": [chunks[0], (b"IDAT", zlib.compress(b"\x07" * (50 * 121))), (b"IEND", b"")],
    }
    for name, parts in cases.items():
        data = _assemble(parts)
        try:
            expected = _pillow_rgb(data)
        except (OSError, ValueError):
            with pytest.raises((OSError, ValueError)):
                _ours(data)
        else:
            np.testing.assert_array_equal(_ours(data), expected, err_msg=name)
