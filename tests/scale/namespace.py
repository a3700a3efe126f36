"""Run a file of Ray cases with pytest inside a loopback-only network namespace (`unshare -n`).

Ray advertises the machine's interface address even when told to use 127.0.0.1, and tests may only talk
to loopback; in a new network namespace whose only interface is `lo`, Ray can bind nothing but 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cases_in_loopback_namespace(cases: Path, basetemp: Path) -> str:
    """Run pytest on `cases` in `unshare -n` (only `lo` up); its stdout (the test fails if the run fails)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("the Ray tests need `unshare` (util-linux) and `ip` (iproute2) to isolate the network")
    inner = (
        f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider -o addopts='' "
        f"--basetemp={basetemp} {cases}"
    )
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", inner], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, (
        f"Ray cases failed inside the namespace:\n{done.stdout[-8000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout
