"""Where this machine keeps each weights file, by sha256: a local record, never part of a store.

A store's fingerprint names its weights by file name and sha256 only (a store is shared; a local path is
not). When mvh loads a checkpoint it records `sha256 -> absolute path` in `<cache>/weights.json`
(`mvh.store.location.cache_root`), so a later image query on this machine finds the file without
--weights; on another machine --weights names it. The sha256 is checked on load either way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from mvh.store.location import cache_root

log = logging.getLogger(__name__)
RECORD = "weights.json"


def _record() -> Path:
    return cache_root() / RECORD


def _read() -> dict[str, str]:
    try:
        data = json.loads(_record().read_text())
    except (OSError, ValueError):
        return {}  # no record yet, or an unreadable one: weights are then named with --weights
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def remember(sha256: str, path: Path) -> None:
    """Record that the weights of `sha256` are at `path` on this machine (best effort: a failure is
    logged, and only costs a --weights later)."""
    where = str(Path(path).resolve())
    places = _read()
    if places.get(sha256) == where:
        return
    places[sha256] = where
    record = _record()
    temp: str | None = None
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".weights-", dir=record.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(places, fh, indent=1, sort_keys=True)
        os.replace(temp, record)  # whole or not at all: concurrent writers never leave half a file
    except OSError as exc:
        log.warning("could not record where weights %s... are (%s): pass --weights later", sha256[:12], exc)
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def local_weights(sha256: str, weights_path: str | None) -> Path | None:
    """The weights file of `sha256` on this machine: the one recorded here, else the path a store made
    before fingerprints kept only the name recorded (if it is there), else None."""
    where = _read().get(sha256)
    if where is not None and Path(where).is_file():
        return Path(where)
    older = None if weights_path is None else Path(weights_path)
    return older if older is not None and older.is_absolute() and older.is_file() else None
