"""The registry: every backbone builds tiny, runs, trains; names and settings are checked."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mvh.errors import ModelNotFoundError, UsageError
from mvh.extractor.models import ModelInfo, create_model, get_model_info, list_models, register_model

# Tiny settings per family so that every registered name builds in milliseconds.
_TINY_MV = dict(embed_dim=32, depth=2, num_heads=2)
_TINY_VIT = dict(embed_dim=32, depth=1, num_heads=2)
NAMES = [info.name for info in list_models()]


def _tiny_overrides(name: str) -> dict:
    return dict(_TINY_MV) if name.startswith("mv_hybrid") else dict(_TINY_VIT)


def test_registry_lists_every_backbone_with_metadata():
    assert {"mv_hybrid", "vit_s12_dinov2", "vit_s24_dinov2", "uni", "phikon_v2", "h_optimus_0"} <= set(NAMES)
    for info in list_models():
        assert info.output_dim > 0 and info.tile_px == 224 and info.mpp == 0.5
        assert len(info.mean) == 3 and len(info.std) == 3
        assert info.weights_source and info.description
        json.dumps(info.to_dict())  # the store fingerprint and `mvh models --json` need plain data


@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_runs_and_trains(name):
    torch.manual_seed(0)
    model = create_model(name, **_tiny_overrides(name))
    size = 4 * model.patch_size
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, model.output_dim)
    assert torch.isfinite(out).all()
    n = 16
    masks = torch.zeros(2, n, dtype=torch.bool)
    masks[:, ::3] = True
    feats = model.forward_features(x, masks=masks)
    assert feats["x_norm_clstoken"].shape == (2, model.embed_dim)
    assert feats["x_norm_patchtokens"].shape == (2, n, model.embed_dim)
    assert feats["masks"] is masks
    loss = out.square().mean() + feats["x_norm_patchtokens"].square().mean()
    loss.backward()
    no_grad = [k for k, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


@pytest.mark.parametrize("name", ["mv_hybrid_tiny", "vit_dinov2_tiny"])
def test_masked_patches_become_the_mask_token(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(1, 3, 64, 64)
    masks = torch.zeros(1, 16, dtype=torch.bool)
    masks[0, 5] = True
    x2 = x.clone()
    x2[..., 16:32, 16:32] = 100.0  # patch 5 (row 1, col 1): masked, so its pixels must not matter
    with torch.no_grad():
        a = model.forward_features(x, masks=masks)["x_norm_patchtokens"]
        b = model.forward_features(x2, masks=masks)["x_norm_patchtokens"]
        c = model.forward_features(x2)["x_norm_patchtokens"]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_bf16_autocast_keeps_the_mixers_in_float32():
    torch.manual_seed(0)
    model = create_model("mv_hybrid_tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, rtol=0.1, atol=0.1)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ModelNotFoundError) as err:
        create_model("mv_hybird")
    assert "mv_hybrid" in str(err.value) and "uni" in str(err.value)
    with pytest.raises(ModelNotFoundError):
        get_model_info("nope")


def test_unknown_setting_is_a_usage_error():
    with pytest.raises(UsageError, match="embed_dims"):
        create_model("mv_hybrid_tiny", embed_dims=32)
    with pytest.raises(UsageError, match="depthh"):
        create_model("vit_dinov2_tiny", depthh=1)


def test_registering_a_name_twice_is_an_error():
    info = get_model_info("mv_hybrid_tiny")
    with pytest.raises(ValueError, match="twice"):

        @register_model(info, nn.Module)
        def mv_hybrid_tiny() -> nn.Module:
            return nn.Identity()


def test_model_info_is_plain_data():
    info = get_model_info("mv_hybrid")
    assert isinstance(info, ModelInfo)
    assert info.output_dim == 768 and info.embed_dim == 384 and info.patch_size == 16
    assert info.default_config["depth"] == 24
    model = create_model("mv_hybrid_tiny")
    assert model.model_name == "mv_hybrid_tiny"


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("mv_hybrid_tiny", {"depth": "abc"}, "depth='abc'.*integer >= 1"),
        ("mv_hybrid_tiny", {"depth": -1}, "depth=-1.*integer >= 1"),
        ("mv_hybrid_tiny", {"embed_dim": 0}, "embed_dim=0"),
        ("mv_hybrid_tiny", {"mlp_ratio": "x"}, "mlp_ratio='x'.*number > 0"),
        ("mv_hybrid_tiny", {"depth": True}, "depth=True"),
        ("vit_dinov2_tiny", {"depth": 1.5}, "depth=1.5"),
        ("vit_dinov2_tiny", {"qkv_bias": "yes"}, "qkv_bias='yes'.*true or false"),
        ("mv_hybrid_tiny", {"embed_dim": 30, "num_heads": 4}, "cannot be built"),
    ],
)
def test_bad_override_values_are_usage_errors_naming_the_option(name, overrides, message):
    with pytest.raises(UsageError, match=f"^--overrides .*{message}"):
        create_model(name, **overrides)


def test_trident_encoder_names_are_aliases_of_the_same_weights():
    from mvh.extractor.models import canonical_name, list_aliases

    # TRIDENT (mahmoodlab/TRIDENT, trident/patch_encoder_models/load.py): uni_v1, hoptimus0, phikon_v2.
    assert list_aliases() == {"hoptimus0": "h_optimus_0", "uni_v1": "uni"}
    assert canonical_name("uni_v1") == "uni" and canonical_name("phikon_v2") == "phikon_v2"
    assert get_model_info("hoptimus0") == get_model_info("h_optimus_0")
    assert get_model_info("uni").aliases == ("uni_v1",)
    model = create_model("uni_v1", embed_dim=32, depth=1, num_heads=2)
    assert model.model_name == "uni" and model.embed_dim == 32
    assert "uni_v1" not in NAMES  # aliases are not listed as backbones of their own


def test_an_alias_cannot_shadow_a_name():
    from mvh.extractor.models.registry import register_alias

    with pytest.raises(ValueError, match="already taken"):
        register_alias("uni", "h_optimus_0")
    with pytest.raises(ValueError, match="already taken"):
        register_alias("uni_v1", "uni")


@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_builds_on_the_meta_device(name):
    """Callers check a name and its overrides without allocating weights (mvh pretrain does, first)."""
    with torch.device("meta"):
        model = create_model(name)
    assert all(p.is_meta for p in model.parameters())
