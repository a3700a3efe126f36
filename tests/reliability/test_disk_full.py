"""A full disk under `mvh index build`: one line, exit 1, no partial file (a real tmpfs that fills up)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability._faults import distinct, store_with

ROOT = Path(__file__).resolve().parents[2]

# In a private mount namespace, the store's index folder is a 32 KiB tmpfs: the rows and vectors of
# 4,000 tiles (over 125 KiB) cannot be written. After the command, the folder is listed from inside the
# namespace.
FILL = """
mount -t tmpfs -o size=32k tmpfs "$INDEX_DIR" || exit 90
"$PY" -m mvh index build --store "$STORE"
code=$?
echo "--- left: $(ls -A "$INDEX_DIR")"
exit $code
"""


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs `unshare -m` (root) to mount a small tmpfs")
def test_index_build_on_a_full_disk_is_one_line_exit_1_and_leaves_no_partial_file(tmp_path) -> None:
    store = store_with(tmp_path / "full.lance", {"a": distinct(2000, 1), "b": distinct(2000, 2)})
    index_dir = Path(store.uri) / "_index"
    index_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PY": sys.executable, "STORE": store.uri,
           "INDEX_DIR": str(index_dir)}  # fmt: skip
    done = subprocess.run(["unshare", "-m", "sh", "-c", FILL], env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot write the index into" in errors[0] and "No space left on device" in errors[0]
    assert done.stdout.strip().endswith("--- left:"), done.stdout  # nothing, not even a temporary file
