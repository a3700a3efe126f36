"""Extraction on a real 2-node Ray cluster, run inside a loopback-only network namespace.

Ray advertises the machine's interface address even when told to use 127.0.0.1, and tests may only
talk to loopback; so the cases in `ray_cases.py` run in `unshare -n` (a new network namespace whose only
interface is `lo`), where Ray can bind nothing but 127.0.0.1. Each case asserts that every node's
address is 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scale.namespace import run_cases_in_loopback_namespace

pytestmark = pytest.mark.ray

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.slow  # ~100 s on 2 cores: `make test-slow` (CI runs it after `make test`)
def test_ray_cases_in_a_loopback_only_namespace(tmp_path: Path) -> None:
    """All cases of ray_cases.py share one 2-node cluster (started once: ~20-60 s on 2 cores)."""
    out = run_cases_in_loopback_namespace(HERE / "ray_cases.py", tmp_path / "inner")
    assert re.search(r"\b6 passed", out), out[-2000:]



# The README's "Run on a cluster" recipe, after a `--ray-address local` run on the head machine. Added
# for the sandbox only: --node-ip-address/--num-cpus, 127.0.0.1 as HEAD_IP, and a HOME per machine (the
# worker node is another machine: it never saw the head's ~/.ray). A private /tmp/ray and PID namespace
# keep `ray start`/`ray stop` away from every other Ray on this machine.
RECIPE = """
set -eu
ip link set lo up
mount -t tmpfs tmpfs /tmp/ray
export HOME="$HEAD_HOME"
$MVH extract "$SLIDE" --store local.lance --ray-address local $TINY --json > local.json
test ! -e "$HEAD_HOME/.ray/auth_token" || { echo "the local run left ~/.ray/auth_token"; exit 3; }
$RAY start --head --port 6379 $SANDBOX
HOME="$WORKER_HOME" $RAY start --address 127.0.0.1:6379 $SANDBOX
$MVH extract "$SLIDE" --store cluster.lance --ray-address auto $TINY --json > cluster.json
$RAY stop
"""


@pytest.mark.slow  # ~40 s on 2 cores: `make test-slow` (CI runs it after `make test`)
def test_the_readme_two_ray_start_recipe_works_after_a_local_run(tmp_path: Path) -> None:
    """Ray >= 2.60 saves ~/.ray/auth_token on a new local instance; the next `ray start --head` then
    demands that token of worker nodes that never saw it. mvh's local instance must leave no such file."""
    import json

    from mvh.core.synthetic_slides import write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "s1.tiff", 448, 448, 0.5, tissue_rects=[(0, 0, 448, 448)])
    Path("/tmp/ray").mkdir(exist_ok=True)  # the mount point of the namespace's own Ray folder
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(
        RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT), SLIDE=str(slide), MVH=f"{sys.executable} -m mvh",
        RAY=str(Path(sys.executable).parent / "ray"), HEAD_HOME=str(tmp_path / "head_home"),
        WORKER_HOME=str(tmp_path / "worker_home"),
        TINY="--model mv_hybrid_tiny --random-init --workers 0",
        SANDBOX="--node-ip-address 127.0.0.1 --num-cpus 1 --disable-usage-stats",
    )  # fmt: skip
    for home in ("head_home", "worker_home"):
        (tmp_path / home).mkdir()
    done = subprocess.run(
        ["unshare", "-n", "-m", "-p", "-f", "--mount-proc", "sh", "-c", RECIPE],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    result = json.loads((tmp_path / "cluster.json").read_text())
    assert [s["status"] for s in result["slides"]] == ["done"] and result["devices"] == ["cpu@127.0.0.1"]
