"""File identity: the sampled hash is the one stores have recorded since the first release."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mvh.core.files import SAMPLED, legacy_edge_sha256, sampled_hash, sha256_file

MIB = 1 << 20


def _expected(data: bytes) -> str:
    """The definition, written out: sha256 of the decimal size, then the first, middle and last MiB."""
    size = len(data)
    digest = hashlib.sha256(str(size).encode())
    for offset in sorted({0, max(0, size // 2 - MIB // 2), max(0, size - MIB)}):
        digest.update(data[offset : offset + MIB])
    return "sha256-3mib:" + digest.hexdigest()


@pytest.mark.parametrize("size", [0, 10, MIB, 3 * MIB + 12345])
def test_the_sampled_hash_is_size_plus_first_middle_last_mib(tmp_path: Path, size: int) -> None:
    data = bytes((i * 7 + i // 4099) % 256 for i in range(size))
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sampled_hash(path) == _expected(data) and sampled_hash(path).startswith(f"{SAMPLED}:")
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_a_byte_outside_the_sampled_mibs_does_not_change_it_but_one_inside_does(tmp_path: Path) -> None:
    data = bytearray(5 * MIB)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    before = sampled_hash(path)
    data[MIB + 10] = 1  # between the first and the middle MiB
    path.write_bytes(data)
    assert sampled_hash(path) == before
    data[0] = 1
    path.write_bytes(data)
    assert sampled_hash(path) != before


def test_the_real_slide_hashes_as_the_previous_release_recorded(sample_slide: Path) -> None:
    """Value computed by mvh 0.1's `mvh.extractor.extract.file_hash`, which stores recorded as file_hash."""
    if sample_slide.name != "CMU-1-Small-Region.svs" or sample_slide.stat().st_size != 1938955:
        pytest.skip("not the reference copy of the sample slide")
    assert sampled_hash(sample_slide) == (
        "sha256-3mib:c325b784b709caf818517779f4a79145592b3ab0a427a5a6ff4f91b6ee7ffa70"
    )


@pytest.mark.parametrize("size", [10, MIB, MIB + 5, 3 * MIB + 12345])
def test_the_legacy_st_key_is_the_first_mib_then_the_rest_up_to_the_last_mib(
    tmp_path: Path, size: int
) -> None:
    """What ST stores recorded as `edge_sha256` before they used `sampled_hash`, written out."""
    data = bytes((i * 7 + i // 4099) % 256 for i in range(size))
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    tail = data[max(size - MIB, MIB) :] if size > MIB else b""
    assert legacy_edge_sha256(path) == hashlib.sha256(data[:MIB] + tail).hexdigest()
