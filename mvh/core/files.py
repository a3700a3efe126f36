"""File identity: the one definition of "the same file", and the whole-file content hash.

Two strengths, for two jobs. `sha256_file` hashes every byte (weights provenance, the verified sample
slide). `sampled_hash` is cheap for slides of many GB: sha256 of the size and of the first, middle and
last MiB, written `sha256-3mib:<hex>`: stores have recorded it per slide (`file_hash`) since the first
release, and ST spot tiles record it for the image they were cut from. `legacy_edge_sha256` is no third
definition: it only re-reads the key ST stores recorded before they used `sampled_hash`, so those stores
are still recognised.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SAMPLED = "sha256-3mib"
_BLOCK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sampled_hash(path: str | Path) -> str:
    """`sha256-3mib:<hex>`: sha256 of the file's size and its first, middle and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        for offset in sorted({0, max(0, size // 2 - _BLOCK // 2), max(0, size - _BLOCK)}):
            f.seek(offset)
            digest.update(f.read(_BLOCK))
    return f"{SAMPLED}:{digest.hexdigest()}"


def legacy_edge_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's first MiB and (past it) its last MiB: the key older ST stores recorded."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(_BLOCK))
        if size > _BLOCK:
            fh.seek(max(size - _BLOCK, _BLOCK))
            digest.update(fh.read())
    return digest.hexdigest()
