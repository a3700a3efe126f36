"""torchrun + DDP or FSDP on CPU (gloo, 2 ranks) equals one process of the same global batch; resume is exact.

KoLeo is off in the comparison: DINOv2 computes it within each rank's batch (nearest neighbours among
that rank's images), so with it on, W ranks and one process legitimately differ.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mvh.extractor.models import create_model, load_weights
from mvh.pretrain.config import load_config
from mvh.pretrain.train import run_pretrain
from mvh.pretrain.train_results import LOG_FILE

from .conftest import TINY_ARCH, tiny_settings

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_cmd(config: Path, out: Path, *extra: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "mvh", "pretrain",
            "--config", str(config), "--out", str(out), "--json", *extra]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _torchrun(
    config: Path, out: Path, *extra: str, nproc: int = 2, ok: bool = True
) -> subprocess.CompletedProcess:
    cmd = _torchrun_cmd(config, out, *extra, nproc=nproc)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def setup(synthetic_tiles, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    settings = tiny_settings(synthetic_tiles, root / "unused", epochs=2, koleo_weight=0.0, device="cpu")
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
    saved = json.loads((full / "results.json").read_text())  # provenance of the global batch
    per_rank = yaml.safe_load(setup[1].read_text())["batch_size"]
    assert (saved["world_size"], saved["batch_per_rank"], saved["global_batch"], saved["parallel"]) == (
        2, per_rank, 2 * per_rank, "ddp")
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


@pytest.fixture(scope="module")
def fsdp_run(setup):
    root, config, _, _, _ = setup
    out = root / "fsdp"
    done = _torchrun(config, out, "--fsdp")
    return out, done


def test_fsdp_equals_one_process_and_ddp(setup, fsdp_run) -> None:
    _, _, single, ddp, _ = setup
    fsdp, done = fsdp_run
    assert json.loads(done.stdout)["steps"] == 8 and "FSDP over 2 processes" in done.stdout
    saved = json.loads((fsdp / "results.json").read_text())
    assert (saved["world_size"], saved["parallel"]) == (2, "fsdp")
    assert saved["global_batch"] == 2 * saved["batch_per_rank"]
    one, two, sharded = _log(single), _log(ddp), _log(fsdp)
    assert [r["step"] for r in sharded] == list(range(8))
    for a, b, c in zip(one, two, sharded, strict=True):
        for term in ("total", "dino", "ibot"):
            assert c["loss"][term] == pytest.approx(a["loss"][term], rel=1e-4, abs=1e-5), (a["step"], term)
            assert c["loss"][term] == pytest.approx(b["loss"][term], rel=1e-5, abs=1e-6), (a["step"], term)
        assert c["grad_norm_backbone"] == pytest.approx(b["grad_norm_backbone"], rel=1e-5)
        assert c["lr"] == pytest.approx(a["lr"])


def test_fsdp_exports_the_ddp_teacher_checkpoint_for_the_extractor(setup, fsdp_run) -> None:
    _, _, _, ddp, _ = setup
    fsdp, _ = fsdp_run
    t_ddp = torch.load(ddp / "teacher_checkpoint.pth", weights_only=True)
    t_fsdp = torch.load(fsdp / "teacher_checkpoint.pth", weights_only=True)
    assert t_fsdp.keys() == t_ddp.keys() == {"teacher"}
    a, b = t_ddp["teacher"], t_fsdp["teacher"]
    assert list(b) == list(a)  # same keys in the same order: no FSDP prefixes, nothing sharded
    for key in a:
        assert (b[key].shape, b[key].dtype, b[key].device.type) == (a[key].shape, a[key].dtype, "cpu"), key
        assert b[key].is_contiguous() and type(b[key]) is torch.Tensor, key
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    x = torch.randn(2, 3, 48, 48)
    outputs = []
    for run in (ddp, fsdp):
        model = create_model("mv_hybrid_tiny", **TINY_ARCH).eval()
        info = load_weights(model, run / "teacher_checkpoint.pth")
        assert info.n_tensors == sum(k.startswith("backbone.") for k in a)
        with torch.no_grad():
            outputs.append(model(x))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # ~20 s on 2 cores: `make test-slow` (CI runs it after `make test`)
def test_fsdp_sharded_checkpoint_resumes_the_same_curve_exactly(setup, fsdp_run) -> None:
    root, config, _, _, _ = setup
    fsdp, _ = fsdp_run
    assert not (fsdp / "checkpoint.pt").exists()
    latest = json.loads((fsdp / "checkpoint_sharded" / "latest.json").read_text())
    assert (latest["folder"], latest["step"], latest["world_size"]) == ("step_00000008", 8, 2)
    assert sorted(p.name for p in (fsdp / "checkpoint_sharded").iterdir()) == ["latest.json", "step_00000008"]
    shards = sorted(p.name for p in (fsdp / "checkpoint_sharded" / "step_00000008").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # every rank writes its own shards
    part = root / "fsdp_resumed"
    _torchrun(config, part, "--fsdp", "--max-steps", "3")
    assert json.loads((part / "checkpoint_sharded" / "latest.json").read_text())["step"] == 3
    torn = part / "checkpoint_sharded" / "step_00000006"  # a save killed half way: latest.json not moved
    torn.mkdir()
    (torn / "__0_0.distcp").write_bytes(b"partial")
    done = _torchrun(config, part, "--fsdp", "--resume")
    assert json.loads(done.stdout)["resumed_from"] == 3
    assert [r["step"] for r in _log(part)] == list(range(8))
    assert sorted(p.name for p in (part / "checkpoint_sharded").iterdir()) == ["latest.json", "step_00000008"]
    for a, b in zip(_log(fsdp), _log(part), strict=True):
        assert b["loss"] == a["loss"] and b["grad_norm_backbone"] == a["grad_norm_backbone"], a["step"]
    full = torch.load(fsdp / "teacher_checkpoint.pth", weights_only=True)["teacher"]
    resumed = torch.load(part / "teacher_checkpoint.pth", weights_only=True)["teacher"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.slow  # ~25 s on 2 cores: `make test-slow` (CI runs it after `make test`)
def test_resume_refuses_another_world_size_or_checkpoint_kind(setup, fsdp_run) -> None:
    _, config, _, ddp, _ = setup
    fsdp, _ = fsdp_run
    cases = [
        (fsdp, ("--fsdp", "--resume"), 1, "written by 2 processes, this run has 1"),
        (ddp, ("--resume",), 1, "written by 2 processes, this run has 1"),
        (ddp, ("--fsdp", "--resume"), 2, "written by a run without --fsdp"),
        (fsdp, ("--resume",), 2, "written by an --fsdp run"),
    ]
    for run, extra, nproc, message in cases:
        before = (run / LOG_FILE).read_text()
        done = _torchrun(config, run, *extra, nproc=nproc, ok=False)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert errors and all(message in line for line in errors), (extra, nproc, done.stderr[-2000:])
        # torchrun reports the exit code with its own traceback; none of mvh's frames may appear in it
        assert "mvh/pretrain" not in done.stderr and (run / LOG_FILE).read_text() == before


def test_fsdp_on_one_rank_equals_one_process_exactly(setup) -> None:
    root, config, single, _, _ = setup
    whole = root / "one_rank.yaml"
    settings = yaml.safe_load(config.read_text())
    whole.write_text(yaml.safe_dump({**settings, "batch_size": settings["batch_size"] * 2}))
    out = root / "fsdp_one_rank"
    _torchrun(whole, out, "--fsdp", nproc=1)
    assert [r["loss"] for r in _log(out)] == [r["loss"] for r in _log(single)]


def test_fsdp_run_killed_mid_training_resumes_the_same_curve_exactly(setup, fsdp_run) -> None:
    root, config, _, _, _ = setup
    fsdp, _ = fsdp_run
    part = root / "fsdp_killed"
    latest = part / "checkpoint_sharded" / "latest.json"
    cmd = _torchrun_cmd(config, part, "--fsdp", "--save-every", "2")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    ranks = _children(proc.pid)  # torchrun starts each rank in a session of its own
    assert len(ranks) == 2 and proc.poll() is None, "the run ended before it could be killed"
    for pid in [proc.pid, *ranks]:  # the whole job dies at once, wherever it is (maybe mid-save)
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _wait_gone(ranks)
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at in (2, 4, 6), killed_at
    done = _torchrun(config, part, "--fsdp", "--resume")
    assert json.loads(done.stdout)["resumed_from"] == killed_at
    assert [r["loss"] for r in _log(part)] == [r["loss"] for r in _log(fsdp)]
