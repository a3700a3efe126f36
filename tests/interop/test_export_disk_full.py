"""`mvh export` onto a full disk: a real 384 KiB tmpfs in a private mount namespace, so the writes fail
with the kernel's own ENOSPC. One line, exit 1, no partial file; the slides written before stay whole."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mvh.store import EmbeddingStore
from tests.reliability._faults import fingerprint

N_TILES, WIDE = 1000, 64  # one slide's h5 is ~300 KiB: the first fits on the tmpfs, the second does not


def _namespace() -> list[str]:
    """The command prefix that gives a shell its own mount namespace (root: -m; others: -rm)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed: no private mount namespace for a tiny tmpfs")
    prefix = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-rm"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("this kernel refuses a private mount namespace here: no tiny tmpfs to fill")
    return prefix


def _store(uri: Path) -> EmbeddingStore:
    store = EmbeddingStore.create(uri, fingerprint(embed_dim=WIDE))
    rng = np.random.default_rng(0)
    for sid in ("a", "b", "c"):
        x = np.arange(N_TILES) * 448
        tiles = pd.DataFrame(
            {
                "tile_id": [f"{sid}:{v}:0:448" for v in x],
                "x": x,
                "y": 0,
                "tile_px": 224,
                "mpp": 0.5,
                "tissue_fraction": 1.0,
            }
        )
        record = {"slide_id": sid, "path": f"{sid}.svs", "width": 10**6, "height": 448, "mpp": 0.25}
        store.add_slide(record, tiles, rng.normal(size=(N_TILES, WIDE)).astype(np.float32))
    return store


# Runs `mvh export` in each format in one interpreter (imports once), listing what each run left behind.
_EXPORTS = """
import shutil, sys
from pathlib import Path
from typer.testing import CliRunner
from mvh.cli import app
for fmt in ("h5", "clam", "parquet"):
    run = CliRunner().invoke(app, ["export", "--store", sys.argv[1], "--out", fmt, "--format", fmt])
    print(f"=== {fmt}")
    print(run.output)
    print(f"rc={run.exit_code} raised={type(run.exception).__name__}")
    print(sorted(p.relative_to(fmt).as_posix() for p in Path(fmt).rglob("*") if p.is_file()))
    shutil.rmtree(fmt)
"""


def _sections(output: str) -> dict[str, str]:
    parts = re.split(r"^=== (\w+)$", output, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_a_full_disk_stops_export_with_one_line_and_no_partial_file(tmp_path) -> None:
    store = _store(tmp_path / "s.lance")
    disk = tmp_path / "disk"
    disk.mkdir()
    exports = f"{sys.executable} -c '{_EXPORTS}' {store.uri}"
    script = f"mount -t tmpfs -o size=384k tmpfs {disk} && cd {disk} && {exports}"
    done = subprocess.run(
        [*_namespace(), "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    # Before: h5py tracebacks from its destructors, a segfault at exit, and the half-written file left.
    assert done.returncode == 0 and "Traceback" not in done.stderr + done.stdout, done.stdout + done.stderr
    runs = _sections(done.stdout)
    for fmt, out in runs.items():
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert "rc=1 raised=SystemExit" in out and len(errors) == 1, (fmt, out)
        assert "No space left on device" in errors[0] and "free space there" in errors[0], errors[0]
        assert ".partial" not in out, (fmt, out)  # nothing half-written remains
    assert "['a.h5']" in runs["h5"] and "1 of 3 slide(s) were written" in runs["h5"]  # slide a stays whole
    assert "['h5_files/a.h5']" in runs["clam"] and "pt_files/a.pt (" in runs["clam"]
    assert "[]" in runs["parquet"] and "nothing was written" in runs["parquet"]
