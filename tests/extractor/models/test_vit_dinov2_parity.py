"""The paper's ViT baselines against a DINOv2-style reference ViT written here from DINOv2's code facts.

Facts used (facebookresearch/dinov2 `dinov2/models/vision_transformer.py`, `dinov2/layers/*`, as in the
MV_Hybrid authors' copy): the model is built at the global-crop size (256 px -> pos_embed [1, 257, D]);
`prepare_tokens_with_masks` concatenates cls and patch tokens and adds `interpolate_pos_encoding(x, w, h)`,
which returns pos_embed unchanged when the patch count matches and the image is square, else resizes the
M x M patch positions bicubically in float32 with `scale_factor=((w0 + 0.1) / M, (h0 + 0.1) / M)` and
`antialias=False` (w0, h0 = image dims // patch); blocks are pre-norm with LayerScale
(`x + ls1(attn(norm1(x)))`, `x + ls2(mlp(norm2(x)))`), LayerNorm eps 1e-6, softmax(q k^T / sqrt(d)) v,
GELU MLP; the inference output is the final-normed cls token.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mvh.extractor.models import create_model


class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // self.heads) ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefMlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class RefLayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x):
        return x * self.gamma


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = RefAttention(dim, heads), RefMlp(dim)
        self.ls1, self.ls2 = RefLayerScale(dim), RefLayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class RefPatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class RefDinoViT(nn.Module):
    """DINOv2's DinoVisionTransformer reduced to what the ViT-S baselines use (no registers, no chunks)."""

    def __init__(self, img_size=256, patch=16, dim=384, depth=2, heads=6, offset=0.1) -> None:
        super().__init__()
        self.patch_size, self.offset = patch, offset
        self.patch_embed = RefPatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // patch) ** 2 + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(RefBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def interpolate_pos_encoding(self, x, w, h):
        npatch, n = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        pos = self.pos_embed.float()
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size, h // self.patch_size
        m = int(math.sqrt(n))
        patch_pos = F.interpolate(
            pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2),
            scale_factor=(float(w0 + self.offset) / m, float(h0 + self.offset) / m),
            mode="bicubic",
            antialias=False,
        )
        assert (w0, h0) == patch_pos.shape[-2:]
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((pos[:, 0].unsqueeze(0), patch_pos), dim=1).to(x.dtype)

    def forward_features(self, x):
        _, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return {"x_norm_clstoken": x[:, 0], "x_norm_patchtokens": x[:, 1:]}


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    ours = create_model("vit_s12_dinov2", depth=2).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.0)  # layer scale of a trained model, so the blocks matter
            elif "pos_embed" in name:
                p.normal_(0, 1.0)  # rough positions: any interpolation difference shows
            else:
                p.add_(torch.randn_like(p) * 0.02)
    ref = RefDinoViT(depth=2).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def test_vit_baselines_are_built_at_the_authors_256px_grid():
    for name in ("vit_s12_dinov2", "vit_s24_dinov2"):
        with torch.device("meta"):
            model = create_model(name)
        assert tuple(model.pos_embed.shape) == (1, 257, 384)
    assert tuple(create_model("vit_dinov2_tiny").pos_embed.shape) == (1, 257, 64)


@pytest.mark.parametrize("size", [(224, 224), (256, 256), (112, 112), (224, 256)])
def test_outputs_equal_the_dinov2_reference(size):
    ours, ref = _pair()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours.forward_features(x), ref.forward_features(x)
        embedding = ours(x)
    torch.testing.assert_close(a["x_norm_clstoken"], b["x_norm_clstoken"], rtol=0, atol=2e-5)
    torch.testing.assert_close(a["x_norm_patchtokens"], b["x_norm_patchtokens"], rtol=0, atol=2e-5)
    torch.testing.assert_close(embedding, b["x_norm_clstoken"], rtol=0, atol=2e-5)


def test_timm_style_resampling_would_differ_at_224px():
    """The check has teeth: timm's antialiased resize of the grid gives other positions than DINOv2's."""
    from timm.layers import resample_abs_pos_embed

    from mvh.extractor.models.vit import interpolate_pos_embed_dinov2

    ours, _ = _pair()
    dinov2 = interpolate_pos_embed_dinov2(ours.pos_embed.detach(), (224, 224), 16)
    timm_style = resample_abs_pos_embed(ours.pos_embed.detach(), new_size=[14, 14], num_prefix_tokens=1)
    assert dinov2.shape == timm_style.shape == (1, 197, 384)
    assert (dinov2 - timm_style).abs().max() > 1e-2


def test_masked_tokens_match_the_reference_with_the_mask_token():
    ours, ref = _pair()
    x = torch.randn(1, 3, 256, 256)
    masks = torch.zeros(1, 256, dtype=torch.bool)
    masks[0, ::7] = True
    with torch.no_grad():
        a = ours.forward_features(x, masks=masks)["x_norm_clstoken"]
        tokens = ref.patch_embed(x)
        tokens = torch.where(masks.unsqueeze(-1), ref.mask_token.unsqueeze(0), tokens)
        tokens = torch.cat((ref.cls_token, tokens), dim=1) + ref.pos_embed
        for blk in ref.blocks:
            tokens = blk(tokens)
        b = ref.norm(tokens)[:, 0]
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
