"""MV_Hybrid (Cho et al. 2025): MambaVision + EinFFT blocks, then attention + MLP blocks, middle cls.

Built from ../shared/spec/mv_hybrid.md so that checkpoints trained with the authors' code load strictly and
give the same numbers (golden parity is tested). File order follows timm: blocks, model, checkpoint
filter, default configs, builder, registered variants.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from torch import Tensor, nn

from mvh.core.backbone import Features
from mvh.extractor.models.einfft import EinFFT
from mvh.extractor.models.registry import ModelInfo, register_model
from mvh.extractor.models.ssm import selective_scan

HE_MEAN = (0.70322989, 0.53606487, 0.66096631)
HE_STD = (0.21716536, 0.26081574, 0.20723464)


class MambaVisionMixer(nn.Module):
    """MambaVision token mixer: SSM branch x and gate-free conv branch z, concatenated and projected."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        d_inner = expand * dim
        self.d_half = d_inner // 2
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        # Parameters first, then submodules: this is the authors' state-dict order.
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_half, 1)
        )
        self.D = nn.Parameter(torch.ones(self.d_half))
        self.in_proj = nn.Linear(dim, d_inner, bias=False)
        self.x_proj = nn.Linear(self.d_half, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_half, bias=True)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        # The reference convolves with padding='same': for an even kernel 1 zero left, 2 right (non-causal).
        self.conv_pad = ((d_conv - 1) // 2, d_conv - 1 - (d_conv - 1) // 2)
        conv = dict(kernel_size=d_conv, groups=self.d_half, bias=False)
        self.conv1d_x = nn.Conv1d(self.d_half, self.d_half, **conv)
        self.conv1d_z = nn.Conv1d(self.d_half, self.d_half, **conv)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, C] -> [B, L, C] (token-major throughout; the scan sees [B, D, L] views)."""
        x, z = self.in_proj(x).chunk(2, dim=-1)  # [B, L, d_half] each
        x = F.silu(depthwise_conv_tokens(x, self.conv1d_x.weight, self.conv_pad))
        z = F.silu(depthwise_conv_tokens(z, self.conv1d_z.weight, self.conv_pad))
        dt, b, c = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(dt)  # [B, L, d_half], bias added once here
        A = -torch.exp(self.A_log.float())
        # The reference passes dt_proj.bias again as delta_bias: it counts twice. Checkpoints depend on it.
        y = selective_scan(
            x.transpose(1, 2),
            dt.transpose(1, 2),
            A,
            b.transpose(1, 2),
            c.transpose(1, 2),
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )
        return self.out_proj(torch.cat([y.transpose(1, 2), z], dim=-1))


def depthwise_conv_tokens(x: Tensor, weight: Tensor, pad: tuple[int, int]) -> Tensor:
    """Depthwise conv1d along the tokens of x [B, L, C] with weight [C, 1, K] and zero padding (left, right).

    Equal to F.conv1d(F.pad(x^T, pad), weight, groups=C)^T, computed as K shifted multiply-adds so that
    the token-major layout needs no transposes.
    """
    length = x.shape[1]
    padded = F.pad(x, (0, 0, pad[0], pad[1]))
    out = padded[:, :length] * weight[:, 0, 0]
    for k in range(1, weight.shape[-1]):
        out = out.addcmul_(padded[:, k : k + length], weight[:, 0, k])
    return out


class Attention(nn.Module):
    """Global multi-head self-attention (fused scaled dot product)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, C] -> [B, L, C]."""
        batch, length, dim = x.shape
        qkv = (
            self.qkv(x)
            .reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    """Pre-norm residual block: token mixer (Mamba or attention) then channel mixer (EinFFT or MLP)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attention: bool,
        mlp_ratio: float = 4.0,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if attention:
            self.mixer: nn.Module = Attention(dim, num_heads, qkv_bias=qkv_bias)
        else:
            self.mixer = MambaVisionMixer(dim, d_state=d_state, d_conv=d_conv, expand=expand)
        self.norm2 = nn.LayerNorm(dim)
        if attention:
            self.channel_mixer: nn.Module = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        else:
            self.channel_mixer = EinFFT(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, C] -> [B, L, C]."""
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        return x + self.drop_path(self.channel_mixer(self.norm2(x)))


class BlockStack(nn.Module):
    """The blocks in sequence (its own module so that state-dict keys read `blocks.blocks.{i}`)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, C] -> [B, L, C]."""
        for block in self.blocks:
            x = block(x)
        return x


def attention_block_indices(depth: int) -> range:
    """Indices of the attention blocks: the second half (the middle block stays Mamba for odd depth)."""
    return range(depth // 2 + depth % 2, depth)


class MVHybrid(nn.Module):
    """Plain (non-hierarchical) Mamba/attention hybrid with a middle cls token and no positional embedding."""

    def __init__(
        self,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 24,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.output_dim = 2 * embed_dim
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(
            img_size=None, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, bias=True
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        attention = attention_block_indices(depth)
        drop_path = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # also under meta
        self.blocks = BlockStack(
            [
                Block(
                    embed_dim,
                    num_heads,
                    attention=i in attention,
                    mlp_ratio=mlp_ratio,
                    d_state=d_state,
                    d_conv=d_conv,
                    expand=expand,
                    qkv_bias=qkv_bias,
                    drop_path=drop_path[i],
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Fresh-model initialisation of the reference (what pretraining from scratch starts from)."""
        trunc_normal_(self.cls_token, std=0.02)
        # The reference first gives dt_proj Mamba's init (uniform weight, inverse-softplus bias) and then
        # wipes it with this pass (trunc-normal weight, zero bias). The paper's models were trained from the
        # wiped state, so that is our default; A_log, D, the convs and EinFFT keep their own init.
        self.apply(_init_module)

    def prepare_tokens(self, x: Tensor, masks: Tensor | None = None) -> tuple[Tensor, int]:
        """Patch tokens (masked ones replaced by mask_token) with the cls token inserted at N // 2."""
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        cls_pos = x.shape[1] // 2
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([x[:, :cls_pos], cls, x[:, cls_pos:]], dim=1), cls_pos

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> Features:
        """x [B, 3, H, W] (masks bool [B, N]) -> normalised cls [B, D], patch tokens [B, N, D], masks."""
        x, cls_pos = self.prepare_tokens(x, masks)
        x = self.norm(self.blocks(x))
        return {
            "x_norm_clstoken": x[:, cls_pos],
            "x_norm_patchtokens": torch.cat([x[:, :cls_pos], x[:, cls_pos + 1 :]], dim=1),
            "masks": masks,
        }

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 3, H, W] normalised -> inference embedding concat(cls, mean patch tokens) [B, 2D]."""
        out = self.forward_features(x)
        return torch.cat([out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(dim=1)], dim=-1)

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
        """Family-specific key adaptation (see `checkpoint_filter_fn`)."""
        return checkpoint_filter_fn(state_dict, self)


def _init_module(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def checkpoint_filter_fn(
    state_dict: dict[str, Tensor], model: MVHybrid
) -> tuple[dict[str, Tensor], list[str]]:
    """Adapt an MV_Hybrid checkpoint: the authors' names are ours, so only the generic unwrapping applies."""
    return dict(state_dict), []


def _info(name: str, description: str, weights_source: str, **config: Any) -> ModelInfo:
    cfg = {**_DEFAULT_ARCH, **config}
    return ModelInfo(
        name=name,
        output_dim=2 * cfg["embed_dim"],
        embed_dim=cfg["embed_dim"],
        tile_px=224,
        patch_size=cfg["patch_size"],
        mean=HE_MEAN,
        std=HE_STD,
        mpp=0.5,
        weights_source=weights_source,
        description=description,
        default_config=cfg,
    )


_DEFAULT_ARCH: dict[str, Any] = dict(
    patch_size=16, embed_dim=384, depth=24, num_heads=6, mlp_ratio=4.0, d_state=16, d_conv=4, expand=2
)
_USER_WEIGHTS = "local file (DINOv2 teacher_checkpoint.pth from the authors' code or `mvh pretrain`)"

default_cfgs: dict[str, ModelInfo] = {
    "mv_hybrid": _info(
        "mv_hybrid",
        "MV_Hybrid (paper): 12 MambaVision+EinFFT then 12 attention blocks, D 384, middle cls, H&E DINOv2",
        _USER_WEIGHTS,
    ),
    "mv_hybrid_tiny": _info(
        "mv_hybrid_tiny",
        "Tiny MV_Hybrid for tests and demos: D 64, 2 Mamba + 2 attention blocks",
        "random init or local file",
        embed_dim=64,
        depth=4,
        num_heads=2,
    ),
}


def _create_mv_hybrid(name: str, **overrides: Any) -> MVHybrid:
    return MVHybrid(**{**default_cfgs[name].default_config, **overrides})


@register_model(default_cfgs["mv_hybrid"], MVHybrid)
def mv_hybrid(**overrides: Any) -> MVHybrid:
    """The paper's MV_Hybrid: 384-d tokens, 24 blocks, 6 heads, 768-d output."""
    return _create_mv_hybrid("mv_hybrid", **overrides)


@register_model(default_cfgs["mv_hybrid_tiny"], MVHybrid)
def mv_hybrid_tiny(**overrides: Any) -> MVHybrid:
    """Tiny MV_Hybrid (64-d, depth 4) for tests."""
    return _create_mv_hybrid("mv_hybrid_tiny", **overrides)
