"""ViT backbones built with timm: the paper's DINOv2 ViT-S baselines and public pathology ViTs.

Nothing here downloads: timm builds the architecture, the user supplies the weights file. The model
adds DINOv2's mask token and training outputs to timm's VisionTransformer so that the ViTs can be
pretrained like MV_Hybrid and load DINOv2 `teacher_checkpoint.pth` files. The paper's ViT baselines are
built as the authors build `vit_small`: at the 256 px global-crop size (16 x 16 grid + cls, `pos_embed`
[1, 257, 384]), with the positional embedding interpolated at run time the DINOv2 way (bicubic on a
scale factor with DINOv2's 0.1 offset, no antialias) for any other input size, e.g. 224 px tiles.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp, SwiGLUPacked, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from mvh.core.backbone import Features
from mvh.extractor.models.mv_hybrid import HE_MEAN, HE_STD
from mvh.extractor.models.registry import ModelInfo, register_alias, register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

_ACT_LAYERS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "silu": nn.SiLU}
_MLP_LAYERS: dict[str, type[nn.Module]] = {"mlp": Mlp, "swiglu_packed": SwiGLUPacked}


def interpolate_pos_embed_dinov2(
    pos_embed: Tensor,
    image_hw: tuple[int, int],
    patch_size: int,
    offset: float = 0.1,
    antialias: bool = False,
) -> Tensor:
    """DINOv2's `interpolate_pos_encoding`: pos_embed [1, 1 + M*M, D] -> [1, 1 + h*w, D] for an H x W image.

    Unchanged when the grid matches and the image is square; else the M x M patch positions are resized
    bicubically (float32) with scale factors ((h + offset) / M, (w + offset) / M), as DINOv2 does, and
    the cls position is kept. Returned in pos_embed's dtype.
    """
    n = pos_embed.shape[1] - 1
    h0, w0 = image_hw[0] // patch_size, image_hw[1] // patch_size
    if h0 * w0 == n and image_hw[0] == image_hw[1]:
        return pos_embed
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"pos_embed holds {n} patch positions, not a square grid")
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        size_or_scale: dict[str, Any] = {"scale_factor": ((h0 + offset) / m, (w0 + offset) / m)}
    else:
        size_or_scale = {"size": (h0, w0)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **size_or_scale)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos_embed[:, :1].float(), patch_pos], dim=1).to(pos_embed.dtype)


class MaskedVisionTransformer(VisionTransformer):
    """timm VisionTransformer with DINOv2's `mask_token` and `forward_features(x, masks)` dict output.

    `pos_interpolation="dinov2"` adapts the positional embedding to the input size at run time as DINOv2
    does (`interpolate_pos_embed_dinov2`); `"timm"` keeps timm's dynamic resampling.
    """

    def __init__(
        self,
        *,
        mlp_layer: str = "mlp",
        act_layer: str = "gelu",
        pos_interpolation: str = "timm",
        interpolate_offset: float = 0.1,
        **kwargs: Any,
    ):
        if mlp_layer not in _MLP_LAYERS or act_layer not in _ACT_LAYERS:
            raise ValueError(
                f"mlp_layer must be one of {sorted(_MLP_LAYERS)}, act_layer one of {sorted(_ACT_LAYERS)}"
            )
        if pos_interpolation not in ("timm", "dinov2"):
            raise ValueError(f"pos_interpolation must be timm or dinov2, got {pos_interpolation!r}")
        super().__init__(
            num_classes=0, mlp_layer=_MLP_LAYERS[mlp_layer], act_layer=_ACT_LAYERS[act_layer], **kwargs
        )
        if pos_interpolation == "dinov2" and (self.no_embed_class or self.pos_embed is None):
            raise ValueError("pos_interpolation='dinov2' needs a pos_embed with a cls position")
        self.pos_interpolation = pos_interpolation
        self.interpolate_offset = interpolate_offset
        self.mask_token = nn.Parameter(torch.zeros(1, self.embed_dim))
        self.output_dim = self.embed_dim
        self.patch_size = self.patch_embed.patch_size[0]

    def _pos_embed_dinov2(self, x: Tensor, image_hw: tuple[int, int]) -> Tensor:
        """Patch tokens [B, h, w, D] -> [cls, (registers), patches] with DINOv2's run-time positions."""
        batch, dim = x.shape[0], x.shape[-1]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, -1, dim)], dim=1)
        pos = interpolate_pos_embed_dinov2(
            self.pos_embed.float(), image_hw, self.patch_size, self.interpolate_offset
        )
        x = x + pos.to(x.dtype)
        if self.reg_token is not None:  # DINOv2 inserts registers after the positions are added
            x = torch.cat([x[:, :1], self.reg_token.expand(batch, -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        return self.pos_drop(x)

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> Features:  # type: ignore[override]
        """x [B, 3, H, W] (masks bool [B, N]) -> normalised cls [B, D], patch tokens [B, N, D], masks."""
        image_hw = (int(x.shape[-2]), int(x.shape[-1]))
        x = self.patch_embed(x)  # [B, N, D], or [B, h, w, D] with dynamic_img_size
        if masks is not None:
            keep_shape = masks.reshape(x.shape[:-1]).unsqueeze(-1)
            x = torch.where(keep_shape, self.mask_token.to(x.dtype), x)
        if self.pos_interpolation == "dinov2":
            x = self._pos_embed_dinov2(x, image_hw)
        else:
            x = self._pos_embed(x)
        x = self.norm_pre(self.patch_drop(x))
        x = self.norm(self.blocks(x))
        return {
            "x_norm_clstoken": x[:, 0],
            "x_norm_regtokens": x[:, 1 : self.num_prefix_tokens],
            "x_norm_patchtokens": x[:, self.num_prefix_tokens :],
            "masks": masks,
        }

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """x [B, 3, H, W] normalised -> inference embedding: the normalised cls token [B, D]."""
        return self.forward_features(x)["x_norm_clstoken"]

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
        """Family-specific key adaptation (see `checkpoint_filter_fn`)."""
        return checkpoint_filter_fn(state_dict, self)


_HF_DINOV2_RENAMES = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.register_tokens$", "reg_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^layernorm\.", "norm."),
)


def _from_hf_dinov2(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face `Dinov2Model` names -> timm names (separate q/k/v fused into qkv)."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        m = re.match(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$", key)
        if m:
            qkv.setdefault(f"blocks.{m[1]}.attn.qkv.{m[3]}", {})[m[2]] = value
            continue
        for pattern, repl in _HF_DINOV2_RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def checkpoint_filter_fn(
    state_dict: dict[str, Tensor], model: MaskedVisionTransformer
) -> tuple[dict[str, Tensor], list[str]]:
    """Adapt DINOv2 (original or Hugging Face) and timm ViT checkpoints to our names; list the changes."""
    notes: list[str] = []
    sd = dict(state_dict)
    if any(k.startswith("embeddings.") for k in sd):
        sd = _from_hf_dinov2(sd)
        notes.append("converted Hugging Face Dinov2Model names to timm")
    if any(re.match(r"^blocks\.\d+\.\d+\.", k) for k in sd):
        sd = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}
        notes.append("flattened DINOv2 block chunks")
    renames = {"register_tokens": "reg_token"}
    for key in list(sd):
        new = re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", renames.get(key, key)))
        if new != key:
            sd[new] = sd.pop(key)
            if "renamed DINOv2 names (register_tokens, mlp.w12/w3) to timm" not in notes:
                notes.append("renamed DINOv2 names (register_tokens, mlp.w12/w3) to timm")
    pos = sd.get("pos_embed")
    if pos is not None and model.pos_embed is not None:
        n_model = model.pos_embed.shape[1]
        grid = model.patch_embed.grid_size
        has_cls_slot = _square(pos.shape[1] - 1) > 0 > _square(pos.shape[1])
        if model.no_embed_class and "cls_token" in sd and has_cls_slot:
            # DINOv2 keeps a position for cls; timm's no_embed_class models fold it into the cls token.
            sd["cls_token"] = sd["cls_token"] + pos[:, :1]
            pos = pos[:, 1:]
            notes.append("folded the cls position into cls_token")
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        old = _square(pos.shape[1] - prefix)
        if pos.shape[1] != n_model and old > 0:
            pos = resample_abs_pos_embed(
                pos, new_size=list(grid), old_size=[old, old], num_prefix_tokens=prefix
            )
            notes.append(f"resampled pos_embed from {old}x{old} to {grid[0]}x{grid[1]}")
        sd["pos_embed"] = pos
    if "mask_token" not in sd:
        sd["mask_token"] = model.mask_token.detach().clone()
        notes.append("kept the model's mask_token (absent from the file; used only for masked pretraining)")
    return sd, notes


def _square(n: int) -> int:
    """Side of a square grid of n tokens, or -1 when n is not a square."""
    side = int(round(n**0.5))
    return side if side * side == n else -1


def _info(
    name: str, output_dim: int, mean: tuple, std: tuple, weights: str, description: str, **cfg: Any
) -> ModelInfo:
    config = {"img_size": 224, "dynamic_img_size": True, **cfg}
    return ModelInfo(
        name=name,
        output_dim=output_dim,
        embed_dim=config["embed_dim"],
        tile_px=224,
        patch_size=config["patch_size"],
        mean=mean,
        std=std,
        mpp=0.5,
        weights_source=weights,
        description=description,
        default_config=config,
    )


# The authors' vit_small: built at the 256 px global crop, DINOv2's run-time interpolation, layer scale 1e-5.
_VIT_S = dict(
    patch_size=16,
    embed_dim=384,
    num_heads=6,
    mlp_ratio=4.0,
    init_values=1e-5,
    img_size=256,
    pos_interpolation="dinov2",
    interpolate_offset=0.1,
)
_VIT_L = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, init_values=1e-5)
_DINOV2_WEIGHTS = "local file (DINOv2 teacher_checkpoint.pth, e.g. from `mvh pretrain`)"

default_cfgs: dict[str, ModelInfo] = {
    "vit_s12_dinov2": _info(
        "vit_s12_dinov2",
        384,
        HE_MEAN,
        HE_STD,
        _DINOV2_WEIGHTS,
        "Paper baseline ViT_12: DINOv2 ViT-S/16, 12 blocks, cls token, H&E pretraining",
        depth=12,
        **_VIT_S,
    ),
    "vit_s24_dinov2": _info(
        "vit_s24_dinov2",
        384,
        HE_MEAN,
        HE_STD,
        _DINOV2_WEIGHTS,
        "Paper baseline ViT_24: DINOv2 ViT-S/16, 24 blocks, cls token, H&E pretraining",
        depth=24,
        **_VIT_S,
    ),
    "vit_dinov2_tiny": _info(
        "vit_dinov2_tiny",
        64,
        HE_MEAN,
        HE_STD,
        "random init or local file",
        "Tiny DINOv2-style ViT for tests and demos: D 64, 2 blocks",
        **{**_VIT_S, "embed_dim": 64, "depth": 2, "num_heads": 2},
    ),
    "uni": _info(
        "uni",
        1024,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "local file: pytorch_model.bin of MahmoodLab/UNI (Hugging Face, gated)",
        "UNI (Chen et al. 2024): ViT-L/16 DINOv2 on 100M tiles, cls token",
        **_VIT_L,
    ),
    "phikon_v2": _info(
        "phikon_v2",
        1024,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "local file: model.safetensors of owkin/phikon-v2 (Hugging Face Dinov2Model)",
        "Phikon-v2 (Filiot et al. 2024): ViT-L/16 DINOv2 on 456M tiles, cls token",
        **_VIT_L,
    ),
    "h_optimus_0": _info(
        "h_optimus_0",
        1536,
        HOPTIMUS_MEAN,
        HOPTIMUS_STD,
        "local file: pytorch_model.bin of bioptimus/H-optimus-0 (Hugging Face, timm format)",
        "H-optimus-0 (Bioptimus 2024): ViT-g/14 with 4 registers, SwiGLU, cls token",
        patch_size=14,
        embed_dim=1536,
        depth=40,
        num_heads=24,
        mlp_ratio=5.33334,
        init_values=1e-5,
        mlp_layer="swiglu_packed",
        act_layer="silu",
        reg_tokens=4,
        no_embed_class=True,
    ),
}


def _create_vit(name: str, **overrides: Any) -> MaskedVisionTransformer:
    return MaskedVisionTransformer(**{**default_cfgs[name].default_config, **overrides})


@register_model(default_cfgs["vit_s12_dinov2"], VisionTransformer)
def vit_s12_dinov2(**overrides: Any) -> MaskedVisionTransformer:
    """The paper's ViT_12 (DINOv2 ViT-S/16, depth 12)."""
    return _create_vit("vit_s12_dinov2", **overrides)


@register_model(default_cfgs["vit_s24_dinov2"], VisionTransformer)
def vit_s24_dinov2(**overrides: Any) -> MaskedVisionTransformer:
    """The paper's ViT_24 (DINOv2 ViT-S/16, depth 24)."""
    return _create_vit("vit_s24_dinov2", **overrides)


@register_model(default_cfgs["vit_dinov2_tiny"], VisionTransformer)
def vit_dinov2_tiny(**overrides: Any) -> MaskedVisionTransformer:
    """Tiny DINOv2-style ViT for tests."""
    return _create_vit("vit_dinov2_tiny", **overrides)


@register_model(default_cfgs["uni"], VisionTransformer)
def uni(**overrides: Any) -> MaskedVisionTransformer:
    """UNI: ViT-L/16, 1024-d cls token."""
    return _create_vit("uni", **overrides)


@register_model(default_cfgs["phikon_v2"], VisionTransformer)
def phikon_v2(**overrides: Any) -> MaskedVisionTransformer:
    """Phikon-v2: ViT-L/16 DINOv2, 1024-d cls token."""
    return _create_vit("phikon_v2", **overrides)


@register_model(default_cfgs["h_optimus_0"], VisionTransformer)
def h_optimus_0(**overrides: Any) -> MaskedVisionTransformer:
    """H-optimus-0: ViT-g/14 with 4 registers, 1536-d cls token."""
    return _create_vit("h_optimus_0", **overrides)


# TRIDENT's encoder names for the same published weights (trident/patch_encoder_models/load.py,
# `encoder_factory`); its `phikon_v2` is already our name.
TRIDENT_ALIASES = {"uni_v1": "uni", "hoptimus0": "h_optimus_0"}
for _alias, _name in TRIDENT_ALIASES.items():
    register_alias(_alias, _name)
