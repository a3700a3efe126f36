"""`mvh index build --ray-address` on a real 2-node Ray cluster equals the one-process build.

The cases (index_ray_cases.py) run in a loopback-only network namespace, as the extraction cases do
(see test_ray_extract.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.scale.namespace import run_cases_in_loopback_namespace

pytestmark = pytest.mark.ray

HERE = Path(__file__).resolve().parent


def test_ray_index_build_in_a_loopback_only_namespace(tmp_path: Path) -> None:
    """Both cases share one 2-node cluster."""
    out = run_cases_in_loopback_namespace(HERE / "index_ray_cases.py", tmp_path / "inner")
    assert re.search(r"\b2 passed", out), out[-2000:]
