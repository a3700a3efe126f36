"""Export files written whole or not at all: a temporary name beside the target, renamed when complete.

A full disk (or another I/O error) in the middle of a file removes the partial file and stops the export
with one line naming the file and the fix (`OutputWriteError`, exit 1). Files completed before it stay
complete; a rerun writes them all again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from mvh.errors import OutputWriteError

# h5py and pyarrow report a failed write as OSError; torch.save as RuntimeError ("file write failed").
_WRITE_ERRORS = (OSError, RuntimeError)


def partial_path(target: Path) -> Path:
    """Where `target` is written until it is complete (hidden, beside it, so the rename is atomic)."""
    return target.with_name(f".{target.name}.partial")


def write_whole(target: Path, write: Callable[[Path], None], done: str) -> None:
    """Call `write(path)` on a temporary file and rename it to `target`; on failure remove it and raise
    OutputWriteError, whose message ends with `done` (what was written before)."""
    partial = partial_path(target)
    try:
        write(partial)
        os.replace(partial, target)
    except _WRITE_ERRORS as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise OutputWriteError(
            f"cannot write {target} ({reason}): free space there or choose another --out, then rerun; {done}"
        ) from exc
