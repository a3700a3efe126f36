"""The training loop on a tiny MV_Hybrid: learning, EMA, mask token, exact resume, usable checkpoints."""

from __future__ import annotations

import json
import math
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.metadata import Metadata

from mvh.errors import CheckpointError, UsageError
from mvh.extractor.models import create_model, load_weights
from mvh.pretrain.checkpoint import load_train_state
from mvh.pretrain.config import load_config
from mvh.pretrain.network import SSLNetwork, build_network, ema_update
from mvh.pretrain.train import run_pretrain
from mvh.pretrain.train_results import LOG_FILE

from .conftest import TINY_ARCH, tiny_settings


def _losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]
    return {r["step"]: r["loss"]["total"] for r in records}


@pytest.fixture(scope="module")
def trained_run(synthetic_tiles, tmp_path_factory):
    """An uninterrupted tiny run of 3 epochs (12 steps)."""
    out = tmp_path_factory.mktemp("run") / "full"
    result = run_pretrain(load_config(None, tiny_settings(synthetic_tiles, out, epochs=3)))
    return result


def test_few_steps_reduce_the_total_loss(trained_run) -> None:
    losses = _losses(trained_run.run_dir)
    assert sorted(losses) == list(range(12)) and trained_run.steps == 12
    first, last = losses[0], sum(losses[i] for i in (9, 10, 11)) / 3
    assert last < first - 0.5, losses
    for name in ("config.yaml", "loss_curve.png", "results.json", "checkpoint.pt"):
        assert (trained_run.run_dir / name).stat().st_size > 0


def test_resume_reproduces_the_uninterrupted_run(synthetic_tiles, trained_run, tmp_path) -> None:
    out = tmp_path / "resumed"
    interrupted = run_pretrain(load_config(None, tiny_settings(synthetic_tiles, out, epochs=3, max_steps=5)))
    assert interrupted.steps == 5
    assert load_train_state(out / "checkpoint.pt")["step"] == 5
    resumed = run_pretrain(load_config(None, tiny_settings(synthetic_tiles, out, epochs=3, resume=True)))
    assert resumed.resumed_from == 5 and resumed.steps == 12
    expected, got = _losses(trained_run.run_dir), _losses(out)
    assert sorted(got) == list(range(12))
    for step in range(5, 12):  # step 5 is the first one after the restart, mid-epoch 1
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-6), step
    full = load_file(trained_run.run_dir / "backbone.safetensors")
    again = load_file(out / "backbone.safetensors")
    for key, value in full.items():
        torch.testing.assert_close(again[key], value, rtol=1e-5, atol=1e-6)


def test_resume_refuses_changed_settings_or_missing_state(synthetic_tiles, trained_run, tmp_path) -> None:
    changed = tiny_settings(synthetic_tiles, trained_run.run_dir, epochs=3, lr=0.5, resume=True)
    with pytest.raises(UsageError, match="lr"):
        run_pretrain(load_config(None, changed))
    with pytest.raises(CheckpointError, match="no training state"):
        run_pretrain(load_config(None, tiny_settings(synthetic_tiles, tmp_path / "new", resume=True)))


def test_checkpoint_loads_strictly_into_mv_hybrid(trained_run) -> None:
    ckpt = torch.load(trained_run.teacher_checkpoint, map_location="cpu", weights_only=True)
    prefixes = {key.split(".")[0] for key in ckpt["teacher"]}
    assert prefixes == {"backbone", "dino_head", "ibot_head"}
    x = torch.randn(2, 3, 64, 64)
    outputs = []
    for path in (trained_run.teacher_checkpoint, trained_run.backbone_weights):
        model = create_model("mv_hybrid_tiny", **TINY_ARCH).eval()
        info = load_weights(model, path)
        assert info.n_tensors == len(load_file(trained_run.backbone_weights))
        with torch.no_grad():
            outputs.append(model(x))
    torch.testing.assert_close(outputs[0], outputs[1])
    reference = create_model("mv_hybrid_tiny", **TINY_ARCH).eval()
    reference.load_state_dict({k[9:]: v for k, v in ckpt["teacher"].items() if k.startswith("backbone.")})
    with torch.no_grad():
        torch.testing.assert_close(outputs[0], reference(x))


def test_teacher_is_the_ema_of_the_student(synthetic_tiles, tmp_path) -> None:
    settings = tiny_settings(synthetic_tiles, tmp_path / "one", max_steps=1, momentum=0.9)
    run_pretrain(load_config(None, settings))
    state = load_train_state(tmp_path / "one" / "checkpoint.pt")
    torch.manual_seed(0)  # the run's seed: rebuild the initial weights, shared by student and teacher
    init = build_network(create_model("mv_hybrid_tiny", **TINY_ARCH), 64, None, 64, 32, 3).state_dict()
    for key, teacher in state["teacher"].items():
        if key.endswith("weight_g"):
            continue
        expected = 0.9 * init[key] + 0.1 * state["student"][key]
        torch.testing.assert_close(teacher, expected, rtol=1e-6, atol=1e-7, msg=key)
    moved = [k for k in state["teacher"] if not torch.equal(state["teacher"][k], init[k])]
    assert len(moved) > 10


def test_ema_update_exact() -> None:
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, momentum=0.75)
    for t, b, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(t.detach(), 0.75 * b + 0.25 * s.detach(), rtol=0, atol=1e-7)


def test_masked_positions_use_the_mask_token() -> None:
    torch.manual_seed(0)
    backbone = create_model("mv_hybrid_tiny", **TINY_ARCH).eval()
    with torch.no_grad():
        backbone.mask_token.normal_()
    x = torch.randn(2, 3, 48, 48)
    masks = torch.zeros(2, 9, dtype=torch.bool)
    masks[0, [0, 4, 8]] = True  # patches (0,0), (1,1), (2,2) of image 0
    x_changed = x.clone()
    for row_col in ((0, 0), (1, 1), (2, 2)):
        r, c = row_col
        x_changed[0, :, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = torch.randn(3, 16, 16) * 5
    with torch.no_grad():
        a = backbone.forward_features(x, masks)
        b = backbone.forward_features(x_changed, masks)
        c = backbone.forward_features(x_changed)
        torch.testing.assert_close(a["x_norm_patchtokens"], b["x_norm_patchtokens"])  # pixels never seen
        assert not torch.allclose(b["x_norm_clstoken"][0], c["x_norm_clstoken"][0])
        backbone.mask_token.add_(torch.randn(32))
        d = backbone.forward_features(x, masks)
    assert not torch.allclose(a["x_norm_clstoken"][0], d["x_norm_clstoken"][0])  # the token is what is seen
    torch.testing.assert_close(a["x_norm_clstoken"][1], d["x_norm_clstoken"][1])  # image 1 is unmasked


def test_student_pass_feeds_masked_tokens_to_ibot_head() -> None:
    torch.manual_seed(0)
    net: SSLNetwork = build_network(create_model("mv_hybrid_tiny", **TINY_ARCH), 16, None, 32, 16, 2)
    seen = {}
    original = net.backbone.forward_features

    def spy(x, masks=None):
        seen.setdefault("masks", []).append(masks)
        return original(x, masks=masks)

    net.backbone.forward_features = spy  # type: ignore[method-assign]
    masks = torch.zeros(4, 9, dtype=torch.bool)
    masks[1, :3] = True
    masks[2, 5] = True
    out = net(torch.randn(4, 3, 48, 48), torch.randn(6, 3, 32, 32), masks)
    assert seen["masks"][0] is masks and seen["masks"][1] is None  # local crops are never masked
    assert out["ibot_logits"].shape == (4, 16) and out["dino_logits"].shape == (10, 16)
    assert out["cls"].shape == (4, 32)


@pytest.mark.parametrize(
    "changes",
    [{"centering": "softmax_center"}, {"mask_probability": 0.0, "local_crops": 0}, {"mask_mode": "random"}],
)
def test_recipe_variants_train(synthetic_tiles, tmp_path, changes) -> None:
    result = run_pretrain(
        load_config(None, tiny_settings(synthetic_tiles, tmp_path / "v", max_steps=2, **changes))
    )
    losses = _losses(result.run_dir)
    assert result.steps == 2 and all(math.isfinite(v) for v in losses.values())
    record = json.loads((result.run_dir / LOG_FILE).read_text().splitlines()[0])
    assert ("ibot" in record["loss"]) == (changes.get("mask_probability", 0.5) > 0)


def test_fsdp_outside_torchrun_is_refused_in_one_line(synthetic_tiles, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from mvh.cli import app

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    out = tmp_path / "run"
    args = ["pretrain", str(synthetic_tiles), "--out", str(out), "--model", "mv_hybrid_tiny", "--fsdp"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--fsdp: needs torchrun" in lines[0], result.output
    assert not out.exists()


def _fake_sharded_checkpoint(run_dir, metadata: bool) -> None:
    folder = run_dir / "checkpoint_sharded" / "step_00000004"
    folder.mkdir(parents=True)
    if metadata:
        (folder / ".metadata").write_bytes(pickle.dumps(Metadata(state_dict_metadata={})))
    latest = {"folder": folder.name, "step": 4, "world_size": 2, "config": {}}
    (run_dir / "checkpoint_sharded" / "latest.json").write_text(json.dumps(latest))


def test_resume_refuses_two_kinds_of_state_or_an_incomplete_sharded_one(
    synthetic_tiles, trained_run, tmp_path
) -> None:
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(trained_run.run_dir / "checkpoint.pt", both / "checkpoint.pt")
    _fake_sharded_checkpoint(both, metadata=True)
    with pytest.raises(UsageError, match="holds both checkpoint.pt and checkpoint_sharded/"):
        run_pretrain(load_config(None, tiny_settings(synthetic_tiles, both, epochs=3, resume=True)))
    partial = tmp_path / "partial"
    _fake_sharded_checkpoint(partial, metadata=False)
    with pytest.raises(CheckpointError, match=r"step_00000004: sharded checkpoint incomplete"):
        run_pretrain(load_config(None, tiny_settings(synthetic_tiles, partial, epochs=3, resume=True)))
