"""MV_Hybrid against the authors' implementation: golden outputs, full-size state-dict keys, input sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mvh.extractor.models import create_model, get_model_info, load_weights
from mvh.extractor.models.mv_hybrid import depthwise_conv_tokens


def test_golden_small_model_reproduces_reference_outputs(golden_path):
    golden = torch.load(golden_path, weights_only=True)
    model = create_model("mv_hybrid", **golden["config"]).eval()
    model.load_state_dict(golden["state_dict"], strict=True)
    with torch.no_grad():
        out = model(golden["input"])
        feats = model.forward_features(golden["input"])
    assert out.shape == golden["output"].shape
    assert (out - golden["output"]).abs().max() <= 1e-4
    assert (feats["x_norm_clstoken"] - golden["cls"]).abs().max() <= 1e-4
    assert (feats["x_norm_patchtokens"] - golden["patch_tokens"]).abs().max() <= 1e-4


def test_golden_state_dict_loads_through_the_checkpoint_adapter(golden_path, tmp_path):
    golden = torch.load(golden_path, weights_only=True)
    path = tmp_path / "teacher_checkpoint.pth"
    teacher = {f"backbone.{k}": v for k, v in golden["state_dict"].items()}
    teacher["dino_head.last_layer.weight"] = torch.zeros(8, 4)
    torch.save({"teacher": teacher}, path)
    model = create_model("mv_hybrid", **golden["config"]).eval()
    info = load_weights(model, path)
    with torch.no_grad():
        assert (model(golden["input"]) - golden["output"]).abs().max() <= 1e-4
    assert info.dropped_keys == ("dino_head.last_layer.weight",)


def test_full_size_keys_and_shapes_match_the_authors_model(keys_tsv):
    rows = [line.split("\t") for line in keys_tsv.read_text().splitlines()[1:] if line.strip()]
    expected = [(key, shape) for key, shape in rows]
    model = create_model("mv_hybrid")
    got = [(key, str(list(v.shape))) for key, v in model.state_dict().items()]
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == 30_963_072
    assert model.output_dim == get_model_info("mv_hybrid").output_dim == 768
    assert model.embed_dim == 384 and model.patch_size == 16


@pytest.mark.parametrize("size, n_patches", [(224, 196), (256, 256)])
def test_input_sizes_and_middle_cls_token(size, n_patches):
    torch.manual_seed(0)
    model = create_model("mv_hybrid_tiny").eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        tokens, cls_pos = model.prepare_tokens(x)
        out = model(x)
    assert cls_pos == n_patches // 2
    assert torch.equal(tokens[:, cls_pos], model.cls_token[0].expand(2, -1))
    assert feats["x_norm_patchtokens"].shape == (2, n_patches, 64)
    expected = torch.cat([feats["x_norm_clstoken"], feats["x_norm_patchtokens"].mean(1)], dim=-1)
    torch.testing.assert_close(out, expected)


def test_attention_blocks_are_the_second_half():
    kinds = {
        depth: [type(b.mixer).__name__ for b in create_model("mv_hybrid_tiny", depth=depth).blocks.blocks]
        for depth in (4, 5)
    }
    assert kinds[4] == ["MambaVisionMixer"] * 2 + ["Attention"] * 2
    assert kinds[5] == ["MambaVisionMixer"] * 3 + ["Attention"] * 2


def test_fresh_init_follows_the_reference():
    torch.manual_seed(0)
    model = create_model("mv_hybrid", embed_dim=64, depth=2, num_heads=2)
    mixer = model.blocks.blocks[0].mixer
    assert torch.count_nonzero(mixer.dt_proj.bias) == 0  # wiped like the reference
    assert torch.equal(mixer.A_log[3], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    assert torch.equal(mixer.D, torch.ones(64))
    assert torch.equal(model.norm.weight, torch.ones(64)) and torch.count_nonzero(model.norm.bias) == 0
    assert 0.015 < mixer.in_proj.weight.std() < 0.025


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kernel", [3, 4])
def test_token_major_conv_equals_pytorch_same_padding(kernel):
    torch.manual_seed(0)
    x = torch.randn(2, 9, 5)
    weight = torch.randn(5, 1, kernel)
    expected = F.conv1d(x.transpose(1, 2), weight, padding="same", groups=5).transpose(1, 2)
    pad = ((kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2)
    torch.testing.assert_close(depthwise_conv_tokens(x, weight, pad), expected)
