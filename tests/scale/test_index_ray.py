"""`mvh index build --ray-address` on a real 2-node Ray cluster equals the one-process build.

The cases (index_ray_cases.py) run in a loopback-only network namespace, as the extraction cases do
(see test_ray_extract.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def test_ray_index_build_in_a_loopback_only_namespace(tmp_path: Path) -> None:
    """Both cases share one 2-node cluster."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("the Ray tests need `unshare` (util-linux) and `ip` (iproute2) to isolate the network")
    inner = (
        f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider -o addopts='' "
        f"--basetemp={tmp_path / 'inner'} {HERE / 'index_ray_cases.py'}"
    )
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", inner], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, (
        f"Ray cases failed inside the namespace:\n{done.stdout[-8000:]}\n{done.stderr[-3000:]}"
    )
    assert re.search(r"\b2 passed", done.stdout), done.stdout[-2000:]
