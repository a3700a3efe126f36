"""torchrun + DDP on CPU (gloo, 2 processes) equals one process with the same global batch; resume is exact.

KoLeo is off in the comparison: DINOv2 computes it within each rank's batch (nearest neighbours among
that rank's images), so with it on, W ranks and one process legitimately differ.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mvh.pretrain.config import load_config
from mvh.pretrain.train import LOG_FILE, run_pretrain

from .conftest import tiny_settings

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "mvh", "pretrain", "--config", str(config), "--out", str(out), "--json", *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def setup(synthetic_tiles, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    settings = tiny_settings(synthetic_tiles, root / "unused", epochs=2, koleo_weight=0.0)
    single = run_pretrain(load_config(None, {**settings, "out": str(root / "single")}))
    per_rank = {**settings, "batch_size": settings["batch_size"] // 2}
    per_rank.pop("out")
    config = root / "ddp.yaml"
    config.write_text(yaml.safe_dump(per_rank))
    full = root / "ddp"
    done = _torchrun(config, full)
    return root, config, single.run_dir, full, done


def test_two_ranks_equal_one_process_with_the_same_global_batch(setup) -> None:
    _, _, single, full, done = setup
    assert done.stdout.count('"steps"') == 1 and json.loads(done.stdout)["steps"] == 8  # rank 0 reports
    one, two = _log(single), _log(full)
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(8))
    for a, b in zip(one, two, strict=True):
        for term in ("total", "dino", "ibot"):
            assert b["loss"][term] == pytest.approx(a["loss"][term], rel=1e-4, abs=1e-5), (a["step"], term)
        assert b["lr"] == pytest.approx(a["lr"])  # lr scaled from the same global batch
    t1 = torch.load(single / "teacher_checkpoint.pth", weights_only=True)["teacher"]
    t2 = torch.load(full / "teacher_checkpoint.pth", weights_only=True)["teacher"]
    assert t1.keys() == t2.keys()
    assert max((t1[k] - t2[k]).abs().max().item() for k in t1) < 1e-4


def test_only_rank_0_writes_and_resume_continues_the_same_curve(setup) -> None:
    root, config, _, full, _ = setup
    assert sorted(p.name for p in full.iterdir() if p.suffix in (".pt", ".pth")) == [
        "checkpoint.pt",
        "teacher_checkpoint.pth",
    ]
    part = root / "resumed"
    _torchrun(config, part, "--max-steps", "3")
    _torchrun(config, part, "--resume")
    assert [r["step"] for r in _log(part)] == list(range(8))
    for a, b in zip(_log(full), _log(part), strict=True):
        assert b["loss"]["total"] == pytest.approx(a["loss"]["total"], rel=1e-5, abs=1e-6)
