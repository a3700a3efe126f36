"""ViT backbones: published configs, DINOv2 / Hugging Face / timm checkpoints, pretraining outputs."""

from __future__ import annotations

import re

import pytest
import torch

from mvh.errors import CheckpointError
from mvh.extractor.models import create_model, get_model_info, load_weights


def _model(name: str, seed: int, **overrides):
    torch.manual_seed(seed)
    model = create_model(name, **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():  # perturb everything so that no zero init hides a wrong mapping
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _outputs_equal(a, b, size: int) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name, published",
    [
        ("vit_s12_dinov2", dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0)),
        ("vit_s24_dinov2", dict(patch_size=16, embed_dim=384, depth=24, num_heads=6, mlp_ratio=4.0)),
        ("uni", dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, init_values=1e-5)),
        ("phikon_v2", dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, init_values=1e-5)),
        (
            "h_optimus_0",
            dict(
                patch_size=14,
                embed_dim=1536,
                depth=40,
                num_heads=24,
                reg_tokens=4,
                no_embed_class=True,
                mlp_layer="swiglu_packed",
                act_layer="silu",
                init_values=1e-5,
            ),
        ),
    ],
)
def test_published_configs(name, published):
    info = get_model_info(name)
    assert {k: info.default_config[k] for k in published} == published
    assert info.output_dim == info.embed_dim == published["embed_dim"]


def test_published_preprocessing():
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (get_model_info("uni").mean, get_model_info("uni").std) == imagenet
    assert (get_model_info("phikon_v2").mean, get_model_info("phikon_v2").std) == imagenet
    hopt = get_model_info("h_optimus_0")
    assert hopt.mean == (0.707223, 0.578729, 0.703617) and hopt.std == (0.211883, 0.230117, 0.177517)
    assert get_model_info("vit_s12_dinov2").mean == get_model_info("mv_hybrid").mean  # pretrained identically


@pytest.mark.parametrize(
    "name, low, high", [("uni", 300e6, 306e6), ("phikon_v2", 300e6, 306e6), ("h_optimus_0", 1.10e9, 1.15e9)]
)
def test_full_size_parameter_counts_on_meta_device(name, low, high):
    with torch.device("meta"):
        model = create_model(name)
    assert low < sum(p.numel() for p in model.parameters()) < high


def _to_dinov2_teacher(state_dict: dict, chunks: int) -> dict:
    """Our (timm) names -> a DINOv2 teacher checkpoint with block chunks, heads and a module. prefix."""
    depth = 1 + max(int(m[1]) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    per_chunk = depth // chunks
    teacher = {}
    for key, value in state_dict.items():
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        if m:
            key = f"blocks.{int(m[1]) // per_chunk}.{m[1]}.{m[2]}"
        teacher[f"module.backbone.{key}"] = value.clone()
    teacher["module.dino_head.mlp.0.weight"] = torch.zeros(4, 4)
    return {"teacher": teacher}


def test_dinov2_teacher_checkpoint_loads_into_vit_s12(tmp_path):
    source = _model("vit_s12_dinov2", 0, depth=2)
    target = _model("vit_s12_dinov2", 1, depth=2)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save(_to_dinov2_teacher(source.state_dict(), chunks=2), path)
    info = load_weights(target, path)
    assert "flattened DINOv2 block chunks" in info.adaptations
    assert torch.equal(target.mask_token, source.mask_token)
    _outputs_equal(source, target, 112)


def test_dinov2_positions_and_registers_fold_into_timm_names(tmp_path):
    source = _model("h_optimus_0", 0, embed_dim=48, depth=2, num_heads=2)
    target = _model("h_optimus_0", 1, embed_dim=48, depth=2, num_heads=2)
    sd = source.state_dict()
    cls_pos = torch.randn(1, 1, 48)
    dinov2 = {k: v for k, v in sd.items() if k not in ("reg_token", "pos_embed", "cls_token")}
    dinov2["register_tokens"] = sd["reg_token"]
    dinov2["cls_token"] = sd["cls_token"] - cls_pos  # DINOv2 adds a cls position to the cls token
    dinov2["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
    for key in list(dinov2):
        if ".mlp.fc1." in key or ".mlp.fc2." in key:
            dinov2[key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")] = dinov2.pop(key)
    path = tmp_path / "dinov2.pth"
    torch.save(dinov2, path)
    load_weights(target, path)
    _outputs_equal(source, target, 224)


def test_hugging_face_dinov2_checkpoint_loads_into_phikon_v2(tmp_path):
    source = _model("phikon_v2", 0, embed_dim=32, depth=2, num_heads=2)
    target = _model("phikon_v2", 1, embed_dim=32, depth=2, num_heads=2)
    hf = {
        "embeddings.cls_token": source.cls_token,
        "embeddings.mask_token": source.mask_token,
        "embeddings.position_embeddings": source.pos_embed,
        "embeddings.patch_embeddings.projection.weight": source.patch_embed.proj.weight,
        "embeddings.patch_embeddings.projection.bias": source.patch_embed.proj.bias,
        "layernorm.weight": source.norm.weight,
        "layernorm.bias": source.norm.bias,
    }
    for i, blk in enumerate(source.blocks):
        pre = f"encoder.layer.{i}."
        weights, biases = blk.attn.qkv.weight.chunk(3), blk.attn.qkv.bias.chunk(3)
        for part, w, b in zip(("query", "key", "value"), weights, biases, strict=True):
            hf[f"{pre}attention.attention.{part}.weight"] = w
            hf[f"{pre}attention.attention.{part}.bias"] = b
        hf[f"{pre}attention.output.dense.weight"] = blk.attn.proj.weight
        hf[f"{pre}attention.output.dense.bias"] = blk.attn.proj.bias
        hf[f"{pre}layer_scale1.lambda1"] = blk.ls1.gamma
        hf[f"{pre}layer_scale2.lambda1"] = blk.ls2.gamma
        for norm in ("norm1", "norm2"):
            hf[f"{pre}{norm}.weight"] = getattr(blk, norm).weight
            hf[f"{pre}{norm}.bias"] = getattr(blk, norm).bias
        for fc in ("fc1", "fc2"):
            hf[f"{pre}mlp.{fc}.weight"] = getattr(blk.mlp, fc).weight
            hf[f"{pre}mlp.{fc}.bias"] = getattr(blk.mlp, fc).bias
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in hf.items()}, str(path))
    info = load_weights(target, path)
    assert "converted Hugging Face Dinov2Model names to timm" in info.adaptations
    _outputs_equal(source, target, 224)


def test_timm_checkpoint_without_mask_token_loads_and_says_so(tmp_path):
    source = _model("uni", 0, embed_dim=32, depth=1, num_heads=2)
    target = _model("uni", 1, embed_dim=32, depth=1, num_heads=2)
    path = tmp_path / "pytorch_model.bin"
    torch.save({k: v for k, v in source.state_dict().items() if k != "mask_token"}, path)
    info = load_weights(target, path)
    assert any("mask_token" in note for note in info.adaptations)
    _outputs_equal(source, target, 224)


def test_pos_embed_of_another_grid_is_resampled_and_reported(tmp_path):
    source = _model("vit_s12_dinov2", 0, depth=1, img_size=224)
    target = _model("vit_s12_dinov2", 1, depth=1)
    path = tmp_path / "ckpt.pth"
    torch.save(source.state_dict(), path)
    info = load_weights(target, path)
    assert "resampled pos_embed from 14x14 to 16x16" in info.adaptations


def test_mv_hybrid_checkpoint_into_a_vit_fails_clearly(tmp_path):
    path = tmp_path / "mvh.pth"
    torch.save(create_model("mv_hybrid_tiny").state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit backbone 'vit_dinov2_tiny'"):
        load_weights(create_model("vit_dinov2_tiny"), path)


@pytest.mark.parametrize("size", [224, 256])
def test_vit_input_sizes(size):
    model = create_model("vit_s12_dinov2", depth=1).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, size, size))
    assert feats["x_norm_patchtokens"].shape == (1, (size // 16) ** 2, 384)
