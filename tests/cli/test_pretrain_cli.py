"""`mvh pretrain` end to end on a synthetic slide, then `mvh extract` with the checkpoint it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mvh.cli import app

runner = CliRunner()

TINY_RUN = [
    "--model", "mv_hybrid_tiny", "--epochs", "1", "--batch-size", "4", "--global-size", "48",
    "--local-size", "32", "--local-crops", "1", "--prototypes", "32", "--workers", "0", "--tile-px", "64",
    "--mpp", "1.0", "--max-tiles", "8", "--set", "head_hidden_dim=32,head_bottleneck_dim=16",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mvh.core.synthetic_slides import write_synthetic_slide

    folder = tmp_path_factory.mktemp("slides")
    return write_synthetic_slide(folder / "s1.tiff", 640, 512, mpp=0.5, tissue_rects=[(0, 0, 640, 512)])


def test_pretrain_slide_then_extract_with_its_checkpoint(slide: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", str(slide), "--out", str(run), *TINY_RUN, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["n_tiles"] == 8
    assert (run / "teacher_checkpoint.pth").exists() and (run / "backbone.safetensors").exists()
    assert "head_hidden_dim: 32" in (run / "config.yaml").read_text()

    store = tmp_path / "emb.lance"
    extract = runner.invoke(
        app,
        ["extract", str(slide), "--store", str(store), "--model", "mv_hybrid_tiny",
         "--weights", str(run / "teacher_checkpoint.pth"), "--tile", "64", "--mpp", "1.0", "--workers", "0",
         "--device", "cpu", "--json"],
    )  # fmt: skip
    assert extract.exit_code == 0, extract.output
    from mvh.store import EmbeddingStore

    opened = EmbeddingStore.open(str(store))
    assert opened.n_tiles > 0 and opened.fingerprint.weights_sha256 != "random-init"


def test_pretrain_table_output_and_resume_needs_state(slide: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    ok = runner.invoke(app, ["pretrain", str(slide), "--out", str(run), *TINY_RUN, "--overrides", "depth=2"])
    assert ok.exit_code == 0, ok.output
    assert str(run / "teacher_checkpoint.pth") in ok.stdout and "pretrain mv_hybrid_tiny" in ok.stdout
    missing = runner.invoke(
        app, ["pretrain", str(slide), "--out", str(tmp_path / "new"), *TINY_RUN, "--resume"]
    )
    assert missing.exit_code == 2 and "no training state" in missing.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--overrides", "depth"], "key=value"),
        (["--set", "epoch=3"], "unknown setting"),
        (["--precision", "fp8"], "precision"),
    ],
)
def test_pretrain_usage_errors_exit_2(slide: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["pretrain", str(slide), "--out", str(tmp_path / "r"), *TINY_RUN, *args])
    assert result.exit_code == 2 and message in result.output


def test_pretrain_missing_input_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pretrain", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *TINY_RUN])
    assert result.exit_code == 2 and "no such file" in result.output


@pytest.mark.slow
def test_pretrain_under_torchrun_two_processes(tmp_path: Path) -> None:
    """DDP on CPU (gloo): the same command line, each rank half of every batch, one report."""
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tiles / f"{i}.png")
    run = tmp_path / "run"
    args = [a for a in TINY_RUN if a not in ("--max-tiles", "8")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "mvh", "pretrain",
           str(tiles), "--out", str(run), *args, "--batch-size", "2", "--json"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count('"steps"') == 1  # rank 0 only
    assert json.loads(done.stdout)["steps"] == 2  # 8 tiles / (2 ranks x 2) per step


def test_print_config_is_the_authors_recipe_in_dinov2_keys() -> None:
    import yaml

    result = runner.invoke(app, ["pretrain", "--print-config"])
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    assert cfg["optim"]["epochs"] == 200 and cfg["optim"]["patch_embed_lr_mult"] == 0.2
    assert cfg["crops"]["global_crops_size"] == 256 and cfg["crops"]["global_crop_2_blur_p"] == 0.9
    assert cfg["compute_precision"]["autocast"] == "fp32" and cfg["dino"]["learn_last_layer_norm"] is True
    changed = runner.invoke(
        app, ["pretrain", "--print-config", "--epochs", "3", "--set", "optim.patch_embed_lr_mult=0.5"]
    )
    cfg = yaml.safe_load(changed.stdout)
    assert cfg["optim"]["epochs"] == 3 and cfg["optim"]["patch_embed_lr_mult"] == 0.5


def test_piped_run_prints_plain_progress_lines_and_notes(slide: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["pretrain", str(slide), "--out", str(tmp_path / "run"), *TINY_RUN])
    assert result.exit_code == 0, result.output
    assert "steps 2/2" in result.output and "note: 8 tiles, 2 steps per epoch, 1 epochs" in result.output
    assert "slides 1/1" in result.output or "steps 0/2" in result.output


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("kind", ["text", "truncated", "malicious", "foreign"])
def test_resume_from_a_bad_checkpoint_is_one_line_exit_2(slide: Path, tmp_path: Path, kind: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    state = run / "checkpoint.pt"
    marker = tmp_path / "pwned"
    if kind == "text":
        state.write_text("this is not a checkpoint\n")
    elif kind == "truncated":
        torch.save({"student": {"w": torch.zeros(100)}}, state)
        state.write_bytes(state.read_bytes()[:150])
    elif kind == "malicious":
        torch.save({"student": _Payload(marker)}, state)
    else:
        torch.save({"weights": torch.zeros(3)}, state)
    result = runner.invoke(app, ["pretrain", str(slide), "--out", str(run), *TINY_RUN, "--resume"])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.count("\n") == 0 and str(state) in message.replace("\n", "")
    assert "Traceback" not in message and "weights_only=False" not in message
    assert not marker.exists()
    expected = {"text": "text file", "truncated": "damaged or truncated", "malicious": "refused unread",
                "foreign": "not a training state"}[kind]  # fmt: skip
    assert expected in message


@pytest.mark.parametrize("value", ["depth=abc", "depth=-1", "embed_dim=0"])
@pytest.mark.parametrize("command", ["pretrain", "extract"])
def test_bad_override_values_exit_2_naming_the_option(slide: Path, tmp_path: Path, command, value) -> None:
    if command == "pretrain":
        args = ["pretrain", str(slide), "--out", str(tmp_path / "r"), *TINY_RUN, "--overrides", value]
    else:
        args = ["extract", str(slide), "--store", str(tmp_path / "e.lance"), "--model", "mv_hybrid_tiny",
                "--random-init", "--overrides", value, "--workers", "0", "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"--overrides {value.split('=')[0]}=" in result.output and "Traceback" not in result.output


def test_vit_s12_checkpoint_has_the_authors_256px_pos_embed(slide: Path, tmp_path: Path) -> None:
    from mvh.extractor.models import create_model, load_weights

    run = tmp_path / "vit"
    args = [a if a != "mv_hybrid_tiny" else "vit_s12_dinov2" for a in TINY_RUN]
    more = ["--global-size", "64", "--overrides", "depth=1"]
    result = runner.invoke(app, ["pretrain", str(slide), "--out", str(run), *args, *more])
    assert result.exit_code == 0, result.output
    teacher = torch.load(run / "teacher_checkpoint.pth", map_location="cpu", weights_only=True)["teacher"]
    assert tuple(teacher["backbone.pos_embed"].shape) == (1, 257, 384)
    info = load_weights(create_model("vit_s12_dinov2", depth=1), run / "teacher_checkpoint.pth")
    assert not any("resampled" in note for note in info.adaptations)
